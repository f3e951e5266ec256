"""Flow runs that hold named concurrency limits for their whole duration (``@flow(concurrency=
...)``, or a deployment of such a flow).

The run's limits are kept in its ``trigger_detail["concurrency"]`` (JSON: no migration), its
slots are ``LimitSlotRow`` rows of holder ``run:<id>`` (``usecases.limits``, acquisition order):

* a local run (``meridian run``) asks at ``CreateRun``: it starts RUNNING if it holds them all,
  else it stays PENDING and ``start_waiting_runs`` (the dispatcher's runner pass) starts it
  when it does; its runner waits meanwhile (``meridian/sdk/flow_limits.py``);
* a hosted run (deployment, ``run --remote``) takes them before a runner is assigned
  (``runners.assign_runners`` asks :func:`holds_limits`);
* the slots are renewed by the lease sweep while the run is alive — PENDING (the control plane
  itself holds it back), wanting a new runner, or with a runner lease not lapsed
  (``limits.renew_leases``) — so they lapse with the runner's lease, and they are released in
  the transaction that ends the run (``store.tx.move_run``).

A run resumed or retried later (``runs resume|retry``) takes its limits again: a local one is
RUNNING if it holds them all at once, else PENDING in their lines like at ``CreateRun``; a hosted
one waits for a runner and takes them before it gets one (``usecases.runs.resume_run``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select

from control_plane.orchestration.limits import acquisition_order
from control_plane.store.models import FlowRunRow, LimitSlotRow
from control_plane.store.tx import RUN_HOLDER, Tx, move_run
from control_plane.usecases import limits
from meridian.core.states import TERMINAL_RUN, RunState

# Waiting runs looked at per pass (oldest request first): the rest wait for the next pass.
MAX_WAITING = 500
LOCAL_LEASE = dt.timedelta(seconds=60)  # runs.DEFAULT_RUNNER_LEASE_S: the runner renews it


def flow_limits(run: FlowRunRow) -> tuple[str, ...]:
    """The named limits ``run`` holds while it lives (none for most runs)."""
    names = (run.trigger_detail or {}).get("concurrency") or ()
    return tuple(str(n) for n in names) if isinstance(names, list | tuple) else ()


def with_limits(detail: dict[str, Any] | None, names: Sequence[str]) -> dict[str, Any] | None:
    """``trigger_detail`` recording the run's limits (unchanged when it takes none)."""
    if not names:
        return detail
    return {**(detail or {}), "concurrency": list(acquisition_order(names))}


def holds_limits(tx: Tx, run: FlowRunRow) -> bool:
    """Take (or keep) a slot of each of the run's limits; False while one is still taken."""
    names = flow_limits(run)
    return not names or limits.acquire(tx, limits.run_holder(run.id), names) is None


def start_if_held(tx: Tx, run: FlowRunRow) -> bool:
    """A PENDING local run that now holds its limits starts: RUNNING with a runner lease."""
    if run.state != RunState.PENDING or run.wants_runner or not holds_limits(tx, run):
        return False
    run.started_at = run.started_at or tx.now  # a resumed run keeps its first start
    run.runner_lease_expires_at = tx.now + LOCAL_LEASE
    move_run(tx, run, RunState.RUNNING, "holds its concurrency limits: flow runner started")
    return True


def start_waiting_runs(tx: Tx) -> int:
    """Start the local runs waiting in a limit's line that now hold all theirs; returns how
    many started. Hosted runs are left to the runner assignment."""
    holders = tx.session.scalars(
        select(LimitSlotRow.holder_id)
        .where(LimitSlotRow.holder_id.like(f"{RUN_HOLDER}%"), LimitSlotRow.expires_at.is_(None))
        .order_by(LimitSlotRow.requested_at, LimitSlotRow.seq)
        .limit(MAX_WAITING)
    ).all()
    started = 0
    for run_id in dict.fromkeys(h.removeprefix(RUN_HOLDER) for h in holders):
        run = tx.session.get(FlowRunRow, run_id, with_for_update=True)
        if run is None or run.state in TERMINAL_RUN:
            limits.release(tx, limits.run_holder(run_id))  # left behind: leave the line
        elif run.state == RunState.PENDING:
            started += int(start_if_held(tx, run))
    return started


def limit_waiting_for(tx: Tx, run: FlowRunRow) -> str:
    """Which limit a run that has not started waits for ("" if it holds them all)."""
    names = flow_limits(run)
    if not names:
        return ""
    position = limits.waiting_position(tx, limits.run_holder(run.id), names)
    return position.message if position is not None else ""
