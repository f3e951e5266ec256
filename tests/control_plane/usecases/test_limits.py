"""Named concurrency limits on a real store: administration (audited), submission refused for
a limit that does not exist, the scheduler assigning an attempt only once it holds a slot of
each of its limits, slots given back when the attempt ends, waiting reasons naming the limit,
and leases renewed for live holders and lapsed for lost ones."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
from collections.abc import Sequence

import pytest
from sqlalchemy import select

from control_plane import audit
from control_plane.orchestration.limits import MAX_LIMIT
from control_plane.store.db import Store
from control_plane.store.models import AttemptRow, EventRow, LimitSlotRow
from control_plane.usecases import limits
from control_plane.usecases.agents import expire_agent_leases
from control_plane.usecases.runs import cancel_run
from control_plane.usecases.scheduling import scheduling_pass
from meridian.core.errors import ConflictError, NotFound, ValidationError
from meridian.core.kinds import EventKind
from meridian.core.states import AttemptState
from tests.control_plane.usecases.helpers import (
    SLOTS,
    T0,
    apply,
    new_run,
    report,
    run_at,
    submit,
)

LIVE = limits.HolderLiveness(T0, {}, 30.0)
_SEQ = itertools.count(1)  # agents' report sequence numbers only grow


def set_limit(store: Store, name: str, n: int, at: dt.datetime = T0) -> limits.LimitView:
    return run_at(store, at, limits.set_limit, name, n)[0]


def views(store: Store, at: dt.datetime = T0) -> dict[str, limits.LimitView]:
    return {v.name: v for v in run_at(store, at, limits.list_limits)[0]}


def run_attempts(store: Store, run_id: str, state: AttemptState) -> list[AttemptRow]:
    return store.run_sync(
        lambda s: list(
            s.scalars(
                select(AttemptRow)
                .where(AttemptRow.flow_run_id == run_id, AttemptRow.state == state)
                .order_by(AttemptRow.queued_at, AttemptRow.id)
            )
        )
    )


def submit_many(store: Store, run_id: str, n: int, concurrency: Sequence[str]) -> None:
    for i in range(n):
        submit(store, run_id, key=f"load#{i}", concurrency=list(concurrency))


def finish(store: Store, attempt: AttemptRow, outcome: str = "SUCCEEDED") -> None:
    """The attempt's agent reports it running, then ended with ``outcome``."""
    assert attempt.agent_id is not None
    running = report(attempt, next(_SEQ), "running")
    ended = report(attempt, next(_SEQ), "finished", outcome=outcome)
    apply(store, attempt.agent_id, [running, ended])


def waiting_messages(store: Store, run_id: str) -> list[str]:
    return store.run_sync(
        lambda s: list(
            s.scalars(
                select(EventRow.message).where(
                    EventRow.flow_run_id == run_id,
                    EventRow.kind == EventKind.ATTEMPT_WAITING.value,
                )
            )
        )
    )


def slot_rows(store: Store) -> list[tuple[str, str, bool]]:
    return store.run_sync(
        lambda s: [
            (r.limit_name, r.holder_id, r.expires_at is not None)
            for r in s.scalars(select(LimitSlotRow).order_by(LimitSlotRow.limit_name))
        ]
    )


# ---- administration -----------------------------------------------------------------------


def test_set_list_and_delete_a_limit_are_audited(store: Store) -> None:
    set_limit(store, "warehouse", 4)
    set_limit(store, "warehouse", 2)
    assert views(store)["warehouse"] == limits.LimitView("warehouse", 2, (), 0)
    deleted, _ = run_at(store, T0, limits.delete_limit, "warehouse")
    assert deleted.limit == 2 and views(store) == {}
    records = store.run_sync(lambda s: list(audit.list_records(s)))
    assert [(r.action, r.subject) for r in records] == [
        ("limit.set", "warehouse"),
        ("limit.set", "warehouse"),
        ("limit.deleted", "warehouse"),
    ]
    assert '"before":4' in records[1].details


@pytest.mark.parametrize(
    ("name", "n"), [("Warehouse", 1), ("", 1), ("a" * 64, 1), ("ok", -1), ("ok", MAX_LIMIT + 1)]
)
def test_a_bad_name_or_size_is_refused(store: Store, name: str, n: int) -> None:
    with pytest.raises(ValidationError):
        set_limit(store, name, n)


def test_deleting_a_missing_limit_says_so(store: Store) -> None:
    with pytest.raises(NotFound, match="'nope' does not exist"):
        run_at(store, T0, limits.delete_limit, "nope")


def test_a_limit_in_use_cannot_be_deleted(store: Store) -> None:
    set_limit(store, "warehouse", 1)
    submit(store, new_run(store), concurrency=["warehouse"])
    run_at(store, T0, scheduling_pass, SLOTS)
    with pytest.raises(ConflictError, match=r"in use \(1 holding, 0 waiting"):
        run_at(store, T0, limits.delete_limit, "warehouse")


def test_a_step_naming_a_limit_that_does_not_exist_is_refused_at_submission(
    store: Store,
) -> None:
    set_limit(store, "warehouse", 1)
    run_id = new_run(store)
    with pytest.raises(NotFound, match=r"'lake', which does not exist.*limits set lake N"):
        submit(store, run_id, concurrency=["lake", "warehouse"])
    assert run_attempts(store, run_id, AttemptState.QUEUED) == []


# ---- scheduling ---------------------------------------------------------------------------


def test_a_step_without_limits_is_not_held_back_by_a_full_one(store: Store) -> None:
    set_limit(store, "warehouse", 1)
    run_id = new_run(store)
    submit_many(store, run_id, 3, ["warehouse"])
    submit(store, run_id, key="free#1")  # no limit, queued last
    run_at(store, T0, scheduling_pass, SLOTS)  # a1: 2 slots for cloud=aws
    assigned = run_attempts(store, run_id, AttemptState.ASSIGNED)
    assert len(assigned) == 2
    assert len(views(store)["warehouse"].holders) == 1


def test_holders_never_exceed_the_limit_and_a_waiting_step_names_it(store: Store) -> None:
    set_limit(store, "warehouse", 2)
    run_id = new_run(store)
    submit_many(store, run_id, 5, ["warehouse"])
    wide = [dataclasses.replace(s, capacity=10) for s in SLOTS]
    run_at(store, T0, scheduling_pass, wide)
    assert len(run_attempts(store, run_id, AttemptState.ASSIGNED)) == 2
    view = views(store)["warehouse"]
    assert len(view.holders) == 2 and view.waiting == 1  # the first turned away joined the line
    assert all(h.startswith(f"step {run_id}/load#") for h in view.holders)
    assert waiting_messages(store, run_id) == [
        "waiting for concurrency limit 'warehouse' (2/2 held; 1st in line) "
        "(3 queued attempts of this target)"
    ]
    for step in range(3):
        first = run_attempts(store, run_id, AttemptState.ASSIGNED)[0]
        finish(store, first)
        assert len(views(store)["warehouse"].holders) == 1  # given back when it ended
        run_at(store, T0, scheduling_pass, wide)
        assert len(run_attempts(store, run_id, AttemptState.ASSIGNED)) == 2, step
        assert len(views(store)["warehouse"].holders) == 2
    assert len(run_attempts(store, run_id, AttemptState.QUEUED)) == 0


def test_lowering_a_limit_evicts_no_one_and_raising_it_admits_waiters(store: Store) -> None:
    set_limit(store, "warehouse", 2)
    run_id = new_run(store)
    submit_many(store, run_id, 4, ["warehouse"])
    run_at(store, T0, scheduling_pass, SLOTS)
    set_limit(store, "warehouse", 0)
    assert len(views(store)["warehouse"].holders) == 2
    finish(store, run_attempts(store, run_id, AttemptState.ASSIGNED)[0])
    run_at(store, T0, scheduling_pass, SLOTS)
    assert len(run_attempts(store, run_id, AttemptState.ASSIGNED)) == 1
    set_limit(store, "warehouse", 3)
    run_at(store, T0, scheduling_pass, SLOTS)
    assert len(run_attempts(store, run_id, AttemptState.ASSIGNED)) == 3


def test_several_limits_are_taken_in_name_order_holding_the_first_while_waiting(
    store: Store,
) -> None:
    set_limit(store, "alpha", 5)
    set_limit(store, "beta", 1)
    run_id = new_run(store)
    submit(store, run_id, key="one", concurrency=["beta", "alpha"])
    submit(store, run_id, key="two", concurrency=["beta", "alpha"])
    run_at(store, T0, scheduling_pass, SLOTS)
    (assigned,) = run_attempts(store, run_id, AttemptState.ASSIGNED)
    (queued,) = run_attempts(store, run_id, AttemptState.QUEUED)
    rows = slot_rows(store)
    assert ("alpha", f"attempt:{queued.id}", True) in rows  # holds alpha, waits for beta
    assert ("beta", f"attempt:{queued.id}", False) in rows
    assert any("concurrency limit 'beta' (1/1 held" in m for m in waiting_messages(store, run_id))
    finish(store, assigned)
    run_at(store, T0, scheduling_pass, SLOTS)
    assert [a.id for a in run_attempts(store, run_id, AttemptState.ASSIGNED)] == [queued.id]


def test_a_cancelled_run_gives_back_its_slots_and_leaves_the_line(store: Store) -> None:
    set_limit(store, "warehouse", 1)
    run_id = new_run(store)
    submit_many(store, run_id, 3, ["warehouse"])
    run_at(store, T0, scheduling_pass, SLOTS)
    assert len(slot_rows(store)) == 2  # one holder, one waiter
    run_at(store, T0, cancel_run, run_id, "stop")
    (attempt,) = run_attempts(store, run_id, AttemptState.ASSIGNED)  # until the agent confirms
    finish(store, attempt, "CANCELLED")
    assert slot_rows(store) == []


# ---- leases -------------------------------------------------------------------------------


def test_live_holders_are_renewed_and_a_lost_agents_attempt_gives_its_slot_back(
    store: Store,
) -> None:
    set_limit(store, "warehouse", 1)
    run_id = new_run(store)
    submit_many(store, run_id, 2, ["warehouse"])
    run_at(store, T0, scheduling_pass, SLOTS)
    later = T0 + dt.timedelta(seconds=20)
    heard = limits.HolderLiveness(T0, {"a1": later}, 30.0)
    renewed, _ = run_at(store, later, limits.renew_leases, heard)
    assert renewed == 1
    # Past the first lease (T0 + 30 s) the renewed slot is still held.
    assert run_at(store, T0 + dt.timedelta(seconds=40), limits.lapse_expired)[0] == []
    # a1 falls silent: the sweep ends its attempt LOST (retried), giving the slot back ...
    lost_at = later + dt.timedelta(seconds=31)
    run_at(store, lost_at, expire_agent_leases, 30.0, T0, {})
    assert len(run_attempts(store, run_id, AttemptState.LOST)) == 1
    # ... and the next pass assigns the one that waited, ahead of the lost one's retry.
    run_at(store, lost_at + dt.timedelta(seconds=5), scheduling_pass, SLOTS[1:2] + SLOTS[:1])
    (assigned,) = run_attempts(store, run_id, AttemptState.ASSIGNED)
    assert assigned.number == 1


def test_a_holder_nothing_renews_lapses_and_the_next_waiter_is_granted(store: Store) -> None:
    set_limit(store, "warehouse", 1)
    run_id = new_run(store)
    submit(store, run_id, key="waits", concurrency=["warehouse"], on_agent_lost="wait")
    submit(store, run_id, key="next", concurrency=["warehouse"])
    run_at(store, T0, scheduling_pass, SLOTS)
    (held,) = run_attempts(store, run_id, AttemptState.ASSIGNED)
    # The agent is silent; with on_agent_lost=wait its attempt is never ended, so only the
    # lease gives the slot back.
    silent = T0 + dt.timedelta(seconds=31)
    run_at(store, silent, limits.sweep_limit_leases, LIVE)
    assert run_attempts(store, run_id, AttemptState.ASSIGNED)[0].id == held.id
    rows = slot_rows(store)
    assert ("warehouse", f"attempt:{held.id}", True) not in rows
    (waiter,) = run_attempts(store, run_id, AttemptState.QUEUED)
    assert rows == [("warehouse", f"attempt:{waiter.id}", True)]


def test_a_restart_longer_than_the_lease_does_not_lapse_live_holders(store: Store) -> None:
    set_limit(store, "warehouse", 1)
    run_id = new_run(store)
    submit_many(store, run_id, 2, ["warehouse"])
    run_at(store, T0, scheduling_pass, SLOTS)
    restarted = T0 + dt.timedelta(minutes=10)
    run_at(store, restarted, limits.sweep_limit_leases, limits.HolderLiveness(restarted, {}, 30))
    assert len(views(store, restarted)["warehouse"].holders) == 1
    assert views(store, restarted)["warehouse"].waiting == 1
