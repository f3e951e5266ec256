"""Flow runs holding named limits (``@flow(concurrency=...)``) on a real store: a hosted run
takes its limits before a runner is assigned (the next one waits, saying which limit), gives
them back in the transaction that ends it, and its slot lapses with its runner's lease."""

from __future__ import annotations

import datetime as dt

from sqlalchemy.orm import Session

from control_plane.store.db import Store
from control_plane.store.models import FlowRunRow, LimitSlotRow
from control_plane.usecases.limits import HolderLiveness, lapse_expired, renew_leases, set_limit
from control_plane.usecases.run_waits import run_waiting_for
from control_plane.usecases.runners import assign_runners, create_hosted_run
from control_plane.usecases.runs import finish_run
from meridian.core.states import RunState
from tests.control_plane.usecases.helpers import T0, run_at
from tests.control_plane.usecases.test_runners import ENDPOINT, hosts


def limited_run(store: Store, at: dt.datetime) -> str:
    run, _ = run_at(store, at, create_hosted_run, flow_name="load", entrypoint="flows.py:load",
                    parameters_json="{}", bundle_sha256="b" * 64, runner_target="",
                    concurrency=("db",))  # fmt: skip
    return run.id


def holders(store: Store) -> list[tuple[str, bool]]:
    rows = store.run_sync(lambda s: list(s.query(LimitSlotRow).order_by(LimitSlotRow.seq)))
    return [(r.holder_id, r.expires_at is not None) for r in rows]


def test_a_hosted_run_takes_its_flow_limits_before_a_runner(store: Store) -> None:
    run_at(store, T0, set_limit, "db", 1)
    first = limited_run(store, T0)
    second = limited_run(store, T0 + dt.timedelta(seconds=1))
    _, effects = run_at(store, T0 + dt.timedelta(seconds=2), assign_runners, hosts(), ENDPOINT)
    assert [f.flow_run_id for f in effects.runner_frames] == [first]  # two free slots, one held
    assert holders(store) == [(f"run:{first}", True), (f"run:{second}", False)]
    why = store.run_sync(lambda s: run_waiting_for(s, second, T0 + dt.timedelta(seconds=3)))
    assert why == "waiting for concurrency limit 'db' (1/1 held; 1st in line)"

    run_at(store, T0 + dt.timedelta(seconds=4), finish_run, first, succeeded=True,
           result_json="1", error=None)  # fmt: skip
    assert holders(store) == [(f"run:{second}", False)]  # released with the run's end
    _, then = run_at(store, T0 + dt.timedelta(seconds=5), assign_runners, hosts(), ENDPOINT)
    assert [f.flow_run_id for f in then.runner_frames] == [second]
    assert holders(store) == [(f"run:{second}", True)]
    assert store.run_sync(lambda s: run_waiting_for(s, second, T0)) == ""


def test_a_run_holders_slot_lapses_once_the_run_is_no_longer_live(store: Store) -> None:
    run_at(store, T0, set_limit, "db", 1)
    run_id = limited_run(store, T0)
    run_at(store, T0, assign_runners, hosts(), ENDPOINT)
    lease = store.run_sync(lambda s: s.get(FlowRunRow, run_id).runner_lease_expires_at)
    liveness = HolderLiveness(T0, {}, 30.0)
    # While the runner's lease holds, the sweep renews the run's slot past its own lease.
    renewed, _ = run_at(store, lease - dt.timedelta(seconds=1), renew_leases, liveness)
    assert renewed == 1
    # A lapsed runner lease alone does not free the slot: after a control-plane restart the
    # old runner may still renew within the grace, and handing its slot on meanwhile would
    # let two runs hold a limit of one. The run keeps it while it is live...
    later = lease + dt.timedelta(minutes=5)
    assert run_at(store, later, renew_leases, liveness)[0] == 1
    # ... and once the lease sweep has crashed it, the slot is not renewed and lapses.

    def crash(session: Session) -> None:
        session.get(FlowRunRow, run_id).state = RunState.CRASHED

    store.run_sync(crash)
    much_later = later + dt.timedelta(minutes=5)
    assert run_at(store, much_later, renew_leases, liveness)[0] == 0
    lapsed, _ = run_at(store, much_later, lapse_expired)
    assert lapsed == [f"run:{run_id}"] and holders(store) == []
