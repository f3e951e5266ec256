"""Shared builders for use-case tests against a real store: each use case runs in a ``Tx``
at a chosen time, and the helpers hand back what it returned together with its effects."""

from __future__ import annotations

import contextvars
import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from control_plane.orchestration.matching import AgentSlot
from control_plane.orchestration.values import Effects, ReportIn, StepSubmission
from control_plane.store.db import Store
from control_plane.store.models import AgentRow, AttemptRow, BundleRow
from control_plane.store.tx import Tx, acting_as, current_actor
from control_plane.usecases.agents import HelloIn, agent_connected
from control_plane.usecases.attempts import apply_reports
from control_plane.usecases.runs import create_run
from control_plane.usecases.scheduling import scheduling_pass
from control_plane.usecases.steps import submit_steps
from meridian.core.errorinfo import ErrorInfo
from meridian.core.kinds import ReportKind
from meridian.core.spec import StepSpec
from meridian.core.states import AttemptState

T = TypeVar("T")
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
# The free slots of the two agents ``make_store`` connects, as the dispatcher would pass them.
SLOTS = [
    AgentSlot("a1", "a1", "aws-demo", {"cloud": "aws"}, frozenset({"process"}), 2, 0),
    AgentSlot("g1", "g1", "gcp-demo", {"cloud": "gcp"}, frozenset({"process"}), 2, 0),
]


def run_at(
    store: Store, now: dt.datetime, usecase: Callable[..., T], *args: Any, **kw: Any
) -> tuple[T, Effects]:
    """Run ``usecase(tx, ...)`` in one committed transaction whose time is ``now``.

    Like ``Store.transact`` the actor is the caller of the current request
    (``audit.acting_as``; "cli" when none was named), but the clock is the test's and the
    effects are handed back instead of applied, so a test can look at them.
    """

    def call(session: Session) -> tuple[T, Effects]:
        tx = Tx(session, now=now, actor=current_actor())
        return usecase(tx, *args, **kw), tx.effects

    return store.run_sync(call)


def run_as(
    store: Store,
    actor: str,
    now: dt.datetime,
    usecase: Callable[..., T],
    *args: Any,
    **kw: Any,
) -> tuple[T, Effects]:
    """``run_at`` on behalf of ``actor`` (an operator's token), without naming it for the
    rest of the test: the actor is set only in a copy of the current context."""
    return contextvars.copy_context().run(_acting, store, actor, now, usecase, args, kw)


def _acting(
    store: Store,
    actor: str,
    now: dt.datetime,
    usecase: Callable[..., T],
    args: tuple[Any, ...],
    kw: dict[str, Any],
) -> tuple[T, Effects]:
    acting_as(actor)
    return run_at(store, now, usecase, *args, **kw)


def schedule(store: Store, now: dt.datetime = T0) -> tuple[Effects, dt.datetime | None]:
    """One scheduling pass over ``SLOTS``: (effects, next timer)."""
    next_timer, effects = run_at(store, now, scheduling_pass, SLOTS)
    return effects, next_timer


def apply(
    store: Store, agent_id: str, reports: list[ReportIn], now: dt.datetime = T0
) -> tuple[int, list[Any], Effects]:
    """Apply an agent's reports: (watermark, decisions, effects)."""
    (watermark, decisions), effects = run_at(store, now, apply_reports, agent_id, reports)
    return watermark, decisions, effects


def spec_dict(**overrides: object) -> dict[str, Any]:
    """A stored step spec (JSON object): an aws step with two retries and no jitter, so
    retry delays are exact."""
    base = {
        "name": "extract",
        "module": "flows",
        "function": "extract",
        "target": "cloud=aws",
        "provider": "process",
        "retries": 2,
        "retry_delay_s": 1.0,
        "retry_backoff": 2.0,
        "retry_jitter": 0.0,
        "timeout_s": 0.0,
        "schedule_timeout_s": 60.0,
        "retry_on": [],
        "options_json": "",
    }
    base.update(overrides)
    return base


def spec(**overrides: object) -> StepSpec:
    """``spec_dict`` read back as the typed ``StepSpec`` the use cases take."""
    return StepSpec.from_json(spec_dict(**overrides))


def make_store(db_url: str) -> Iterator[Store]:
    """A migrated store with one bundle (``"b" * 64``) and two connected agents with two
    slots each: a1 in aws-demo (cloud=aws) and g1 in gcp-demo (cloud=gcp)."""
    s = Store(db_url)
    s.migrate()
    s.run_sync(
        lambda session: session.add(BundleRow(sha256="b" * 64, size=1, data=b"x", created_at=T0))
    )
    for agent_id, env, labels in (
        ("a1", "aws-demo", {"cloud": "aws"}),
        ("g1", "gcp-demo", {"cloud": "gcp"}),
    ):
        s.run_sync(
            lambda session, i=agent_id, e=env: session.add(
                AgentRow(
                    id=i,
                    name=i,
                    environment=e,
                    labels={},
                    providers=[],
                    capacity=0,
                    status="disconnected",
                    cert_fingerprint="",
                    enrolled_at=T0,
                    last_applied_seq=0,
                )
            )
        )
        hello = HelloIn("0.1", labels, ("process",), 2, {}, "host", False)
        run_at(s, T0, agent_connected, agent_id, "", hello)
    yield s
    s.close()


def new_run(store: Store) -> str:
    """A RUNNING manual run of flow ``etl`` created at ``T0``; returns its id."""
    run, _ = run_at(
        store,
        T0,
        create_run,
        flow_name="etl",
        entrypoint="flows.py:etl",
        parameters_json="{}",
        bundle_sha256="b" * 64,
        trigger="manual",
    )
    return run.id


def submit(store: Store, run_id: str, key: str = "extract#1", **kw: object) -> str:
    """Submit one step call at ``T0`` (spec overrides in ``kw``); returns its step run id."""
    sub = StepSubmission(key=key, spec=spec(**kw), inputs_json='{"args": [1], "kwargs": {}}')
    submitted, _ = run_at(store, T0, submit_steps, run_id, [sub])
    return submitted[0].step_run_id


def attempts(store: Store, step_id: str) -> list[AttemptRow]:
    """The step run's attempts, first one first."""
    return store.run_sync(
        lambda s: list(
            s.scalars(
                select(AttemptRow)
                .where(AttemptRow.step_run_id == step_id)
                .order_by(AttemptRow.number)
            )
        )
    )


def holder(attempt: AttemptRow) -> str:
    """The id of the agent holding ``attempt`` (it must be assigned to one)."""
    assert attempt.agent_id is not None, f"attempt {attempt.id} is not assigned"
    return attempt.agent_id


def report(
    attempt: AttemptRow, seq: int, kind: str, *, at: dt.datetime = T0, **kw: Any
) -> ReportIn:
    """A report as the API layer decodes it (string outcome and error dict accepted); ``at``
    is when the agent observed it."""
    if "outcome" in kw:
        kw["outcome"] = AttemptState(kw["outcome"])
    if isinstance(kw.get("error"), dict):
        kw["error"] = ErrorInfo.from_json(kw["error"])
    return ReportIn(
        seq=seq,
        attempt_id=attempt.id,
        fencing_token=attempt.fencing_token,
        at=at,
        kind=ReportKind(kind),
        **kw,
    )
