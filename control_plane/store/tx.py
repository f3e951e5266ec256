"""The transaction context every use case runs in, and the one place state changes.

``Tx`` joins what a use case needs: the session of the open transaction, the time the
transaction started (one clock for the whole change), the ``Effects`` to carry out after the
commit, and the actor the audit log names. ``Store.transact`` makes one, calls the use case,
commits, then applies the effects.

``move_run``/``move_step``/``move_attempt`` check the move against the state machines and write
its event in the same transaction, so the new current state and the history row that
documents it commit (or roll back) together.
"""

from __future__ import annotations

import contextvars
import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Table, delete, event, insert, text
from sqlalchemy.orm import Session

from control_plane.orchestration.machines import (
    check_attempt_transition,
    check_run_transition,
    check_step_transition,
)
from control_plane.orchestration.ready import ReadyEntry
from control_plane.orchestration.values import Effects
from control_plane.store.models import AttemptRow, EventRow, FlowRunRow, LimitSlotRow, StepRunRow
from meridian.core.kinds import EventKind
from meridian.core.states import TERMINAL_ATTEMPT, TERMINAL_RUN, AttemptState, RunState, StepState

SYSTEM_ACTOR = "system"  # the control plane itself (sweeps, timers)
CLI_ACTOR = "cli"  # a local operator with the data directory, or an unauthenticated caller

# Who acts for the request being served: set by the API edge once it has authenticated the
# caller, read by ``Store.transact`` (it runs in a copy of the caller's context).
_ACTING_AS: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "meridian_acting_as", default=None
)


def acting_as(actor: str) -> None:
    """Name the caller of the current request for every transaction it starts."""
    _ACTING_AS.set(actor)


def current_actor() -> str:
    return _ACTING_AS.get() or CLI_ACTOR


@dataclass
class Tx:
    """One open transaction: session, its time, the effects to apply after commit, the actor."""

    session: Session
    now: dt.datetime
    effects: Effects = field(default_factory=Effects)
    actor: str = CLI_ACTOR


MAX_EVENT_MESSAGE = 4000
_PENDING_EVENTS = "meridian.pending_events"
# pg_advisory_xact_lock key for "events are inserted in commit order"; "MRDNEVTS" as an int.
_EVENTS_LOCK_KEY = int.from_bytes(b"MRDNEVTS", "big") >> 1


_EVENTS_TABLE = cast(Table, EventRow.__table__)


def _insert_events_in_commit_order(session: Session) -> None:
    """Insert the transaction's events last, under a lock held until commit.

    Watchers read a run's events by increasing id. On PostgreSQL several transactions run at
    once and ids are taken at insert time, so without this an event could commit after a
    higher id had already been streamed and never be delivered. Taking the lock as the last
    thing before commit (after the change's own row locks) keeps the lock order the same
    everywhere, so it cannot deadlock. SQLite has one writer: no lock needed.
    """
    rows: list[dict[str, Any]] | None = session.info.pop(_PENDING_EVENTS, None)
    if not rows:
        return
    session.flush()
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _EVENTS_LOCK_KEY})
    # One executemany in queue order (ids increase in that order), without the ORM's per-row
    # bookkeeping: nothing reads these rows back in this transaction.
    session.execute(insert(_EVENTS_TABLE), rows)


def _discard_events(session: Session) -> None:
    session.info.pop(_PENDING_EVENTS, None)


if not event.contains(Session, "before_commit", _insert_events_in_commit_order):
    event.listen(Session, "before_commit", _insert_events_in_commit_order)
    event.listen(Session, "after_rollback", _discard_events)


def record_event(
    tx: Tx,
    *,
    kind: EventKind,
    flow_run_id: str | None,
    step: StepRunRow | None = None,
    attempt: AttemptRow | None = None,
    from_state: str | None = None,
    to_state: str | None = None,
    message: str = "",
    details: dict[str, Any] | None = None,
    key: str | None = None,
) -> None:
    """Queue an event; ``key`` names what it is about when that is not a step run (an
    approval's key), and is shown where a step's key would be.

    The event of a newly queued attempt also announces it to the scheduler's ready queue
    (``announce_queued``): every way of queueing an attempt writes that event.
    """
    if kind == EventKind.ATTEMPT_QUEUED and attempt is not None and step is not None:
        announce_queued(tx, attempt, step)
    tx.session.info.setdefault(_PENDING_EVENTS, []).append(
        {
            "flow_run_id": flow_run_id,
            "step_run_id": step.id if step else (attempt.step_run_id if attempt else None),
            "attempt_id": attempt.id if attempt else None,
            "step_key": step.key if step else key,
            "kind": kind.value,
            "from_state": from_state,
            "to_state": to_state,
            "message": message[:MAX_EVENT_MESSAGE],
            "details": details,
            "created_at": tx.now,
        }
    )


def record_events(tx: Tx, events: list[dict[str, Any]]) -> None:
    """Queue many events at once (a bulk submission), each already the column values that
    ``record_event`` would queue for it, in the order they happened."""
    tx.session.info.setdefault(_PENDING_EVENTS, []).extend(events)


def move_run(tx: Tx, run: FlowRunRow, target: RunState, message: str = "") -> None:
    check_run_transition(run.state, target)
    previous, run.state = run.state, target
    record_event(
        tx,
        kind=EventKind.entered(target),
        flow_run_id=run.id,
        from_state=previous,
        to_state=target,
        message=message,
    )
    tx.effects.touched_runs.add(run.id)
    if target in TERMINAL_RUN and (run.trigger_detail or {}).get("concurrency"):
        release_run_slots(tx, run.id)


def move_step(
    tx: Tx,
    step: StepRunRow,
    target: StepState,
    message: str = "",
    details: dict[str, Any] | None = None,
) -> None:
    check_step_transition(step.state, target)
    previous, step.state = step.state, target
    record_event(
        tx,
        kind=EventKind.entered(target),
        flow_run_id=step.flow_run_id,
        step=step,
        from_state=previous,
        to_state=target,
        message=message,
        details=details,
    )
    tx.effects.touched_runs.add(step.flow_run_id)


def move_attempt(
    tx: Tx,
    attempt: AttemptRow,
    step: StepRunRow,
    target: AttemptState,
    message: str = "",
    details: dict[str, Any] | None = None,
) -> None:
    check_attempt_transition(attempt.state, target)
    previous, attempt.state = attempt.state, target
    record_event(
        tx,
        kind=EventKind.entered(target),
        flow_run_id=attempt.flow_run_id,
        step=step,
        attempt=attempt,
        from_state=previous,
        to_state=target,
        message=message,
        details=details,
    )
    tx.effects.touched_runs.add(attempt.flow_run_id)
    if target in TERMINAL_ATTEMPT and step.spec.concurrency:
        release_attempt_slots(tx, attempt.id)


# A ``LimitSlotRow.holder_id`` naming an attempt (``usecases.limits``).
ATTEMPT_HOLDER = "attempt:"


def release_attempt_slots(tx: Tx, attempt_id: str) -> None:
    """An attempt that ends gives back the concurrency-limit slots it held (or leaves their
    queues) in the transaction that ends it; the scheduler wakes for the next waiter."""
    tx.session.execute(
        delete(LimitSlotRow).where(LimitSlotRow.holder_id == f"{ATTEMPT_HOLDER}{attempt_id}")
    )
    tx.effects.wake_scheduler = True


# A ``LimitSlotRow.holder_id`` naming a flow run (``@flow(concurrency=...)``).
RUN_HOLDER = "run:"


def release_run_slots(tx: Tx, run_id: str) -> None:
    """A run that ends (finished, cancelled, crashed, failed for a lost runner) gives back its
    flow's limit slots in the transaction that ends it; waiting runs and steps may start."""
    holder = f"{RUN_HOLDER}{run_id}"
    tx.session.execute(delete(LimitSlotRow).where(LimitSlotRow.holder_id == holder))
    tx.effects.wake_scheduler = True
    tx.effects.runners_wanted = True


def announce_queued_rows(
    tx: Tx,
    rows: Iterable[Mapping[str, Any]],
    targets: Mapping[str, str],
    limits: Mapping[str, tuple[str, ...]] | None = None,
    result_stores: Mapping[str, str] | None = None,
) -> None:
    """``announce_queued`` for attempts inserted in bulk: their column values, the target of
    each step run by id, and the concurrency limits and result store of those that name
    some."""
    limits = limits or {}
    result_stores = result_stores or {}
    tx.effects.queued.extend(
        ReadyEntry(
            attempt_id=row["id"],
            flow_run_id=row["flow_run_id"],
            step_run_id=row["step_run_id"],
            target=targets[row["step_run_id"]],
            provider=row["provider"],
            queued_at=row["queued_at"],
            not_before=row["not_before"],
            deadline=row["schedule_deadline"],
            limits=limits.get(row["step_run_id"], ()),
            result_store=result_stores.get(row["step_run_id"], ""),
        )
        for row in rows
    )
    tx.effects.wake_scheduler = True


def announce_queued(tx: Tx, attempt: AttemptRow, step: StepRunRow) -> None:
    """Tell the scheduler's ready queue, after the commit, that ``attempt`` is queued."""
    tx.effects.queued.append(
        ReadyEntry(
            attempt_id=attempt.id,
            flow_run_id=attempt.flow_run_id,
            step_run_id=step.id,
            target=step.spec.target,
            provider=attempt.provider,
            queued_at=attempt.queued_at,
            not_before=attempt.not_before,
            deadline=attempt.schedule_deadline,
            limits=step.spec.concurrency,
            result_store=step.spec.result_store,
        )
    )
    tx.effects.wake_scheduler = True
