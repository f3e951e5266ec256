"""Shared builders for orchestration tests against a real store."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

from sqlalchemy import select

from control_plane.orchestration import engine
from control_plane.orchestration.agents import HelloIn, agent_connected
from control_plane.orchestration.values import Effects, ReportIn, StepSubmission
from control_plane.scheduler.matching import AgentSlot
from control_plane.store.db import Store
from control_plane.store.models import AgentRow, AttemptRow, BundleRow

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def spec(**overrides: object) -> dict:
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


def make_store(db_url: str) -> Iterator[Store]:
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
        s.run_sync(agent_connected, agent_id, "", hello, T0)
    yield s
    s.close()


SLOTS = [
    AgentSlot("a1", "a1", "aws-demo", {"cloud": "aws"}, frozenset({"process"}), 2, 0),
    AgentSlot("g1", "g1", "gcp-demo", {"cloud": "gcp"}, frozenset({"process"}), 2, 0),
]


def new_run(store: Store) -> str:
    def create(session):  # type: ignore[no-untyped-def]
        return engine.create_run(
            session,
            flow_name="etl",
            entrypoint="flows.py:etl",
            parameters_json="{}",
            bundle_sha256="b" * 64,
            trigger="manual",
            now=T0,
            effects=Effects(),
        ).id

    return store.run_sync(create)


def submit(store: Store, run_id: str, key: str = "extract#1", **kw: object) -> str:
    sub = StepSubmission(key=key, spec=spec(**kw), inputs_json='{"args": [1], "kwargs": {}}')
    return store.run_sync(engine.submit_steps, run_id, [sub], T0, Effects())[0].step_run_id


def attempts(store: Store, step_id: str) -> list[AttemptRow]:
    return store.run_sync(
        lambda s: list(
            s.scalars(
                select(AttemptRow)
                .where(AttemptRow.step_run_id == step_id)
                .order_by(AttemptRow.number)
            )
        )
    )


def report(attempt: AttemptRow, seq: int, kind: str, **kw: object) -> ReportIn:
    return ReportIn(
        seq=seq, attempt_id=attempt.id, fencing_token=attempt.fencing_token, at=T0, kind=kind, **kw
    )  # type: ignore[arg-type]
