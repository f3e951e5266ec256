"""The scheduler's in-memory ready queue (``orchestration/ready.py``), with plain values."""

from __future__ import annotations

import datetime as dt

from control_plane.orchestration.ready import ReadyEntry, ReadyQueue

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def entry(
    n: int,
    *,
    run: str = "r1",
    target: str = "cloud=aws",
    start_in: float = 0.0,
    deadline_in: float | None = 600.0,
) -> ReadyEntry:
    queued = T0 + dt.timedelta(seconds=n)
    return ReadyEntry(
        attempt_id=f"a{n}",
        flow_run_id=run,
        step_run_id=f"s{n}",
        target=target,
        provider="process",
        queued_at=queued,
        not_before=queued + dt.timedelta(seconds=start_in),
        deadline=None if deadline_in is None else queued + dt.timedelta(seconds=deadline_in),
    )


def ids(entries: object) -> list[str]:
    return [e.attempt_id for e in entries]  # type: ignore[attr-defined]


def test_due_entries_come_oldest_first_and_not_before_their_start() -> None:
    queue = ReadyQueue([entry(3), entry(1), entry(2, start_in=30)])
    assert ids(queue.due(T0 + dt.timedelta(seconds=10))) == ["a1", "a3"]
    assert ids(queue.due(T0 + dt.timedelta(seconds=40))) == ["a1", "a2", "a3"]


def test_discard_and_add_keep_groups_with_their_oldest_entry() -> None:
    queue = ReadyQueue([entry(1), entry(2), entry(3, run="r2")])
    later = T0 + dt.timedelta(seconds=10)
    groups = {key: (first.attempt_id, size) for key, first, size in queue.groups(later)}
    assert groups == {
        ("r1", "cloud=aws", "process", "", ""): ("a1", 2),
        ("r2", "cloud=aws", "process", "", ""): ("a3", 1),
    }
    queue.discard(["a1", "a3", "unknown"])
    queue.add([entry(2), entry(4)])  # a known entry is not added twice
    assert len(queue) == 2
    groups = {key: (first.attempt_id, size) for key, first, size in queue.groups(later)}
    assert groups == {("r1", "cloud=aws", "process", "", ""): ("a2", 2)}


def test_next_timer_is_the_next_start_or_deadline_of_what_is_queued() -> None:
    queue = ReadyQueue([entry(1, start_in=30, deadline_in=None), entry(2, deadline_in=100)])
    now = T0 + dt.timedelta(seconds=5)  # a2 may start; a1 waits for its retry delay
    assert queue.next_timer(now) == T0 + dt.timedelta(seconds=31)
    queue.discard(["a1"])
    assert queue.next_timer(now) == T0 + dt.timedelta(seconds=102)
    queue.discard(["a2"])
    assert queue.next_timer(now) is None


def test_pop_expired_takes_out_only_entries_past_their_deadline_up_to_a_limit() -> None:
    queue = ReadyQueue([entry(n, deadline_in=10) for n in range(1, 6)] + [entry(50)])
    now = T0 + dt.timedelta(seconds=14)  # deadlines of a1..a4 have passed
    assert queue.expired(now)
    assert queue.pop_expired(now, limit=3) == ["a1", "a2", "a3"]
    assert queue.pop_expired(now) == ["a4"]
    assert not queue.expired(now)
    assert ids(queue.due(now + dt.timedelta(seconds=100))) == ["a5", "a50"]


def test_replace_rebuilds_from_the_store_and_keeps_known_waiting_reasons() -> None:
    queue = ReadyQueue([entry(1), entry(2)])
    queue.explained.add(("r1", "cloud=aws", "process", "", "", "no_free_slot"))
    queue.replace([entry(2), entry(3)])  # a1 was assigned elsewhere, a3 queued elsewhere
    assert ids(queue.due(T0 + dt.timedelta(seconds=10))) == ["a2", "a3"]
    assert queue.explained == {("r1", "cloud=aws", "process", "", "", "no_free_slot")}
