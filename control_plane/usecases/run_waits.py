"""Why a run has not started yet (``RunDetail.waiting_for``, shown by ``runs show`` and the
console): its scheduled start (``start_after``), a named limit of its flow
(``run_limits``), its deployment's concurrency or a free runner slot
(``runners.runner_waiting_for``). A read: nothing is changed or queued by asking.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy.orm import Session

from control_plane.orchestration.runner_plan import RunnerHost
from control_plane.store.models import FlowRunRow
from control_plane.store.tx import Tx
from control_plane.usecases.run_limits import limit_waiting_for
from control_plane.usecases.runners import runner_waiting_for
from meridian.core.states import TERMINAL_RUN, RunState


def run_waiting_for(
    session: Session, run_id: str, now: dt.datetime, hosts: Sequence[RunnerHost] | None = None
) -> str:
    """Why a run has not started (a read, for ``GetRun``): its scheduled start, a limit of
    its flow, its deployment's concurrency or a runner; "" once it runs."""
    run = session.get(FlowRunRow, run_id)
    if run is None or run.state in TERMINAL_RUN:
        return ""
    if run.state != RunState.PENDING and not run.wants_runner:
        return ""
    if run.start_after is not None and _aware(run.start_after) > now:
        return f"waiting for its scheduled start at {_aware(run.start_after):%Y-%m-%d %H:%M:%S} UTC"
    held_back = limit_waiting_for(Tx(session, now=now), run)
    if held_back:
        return held_back
    return runner_waiting_for(session, run, hosts)


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
