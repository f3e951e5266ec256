"""Which slots fire after a normal wake-up and after downtime (skip, latest, all)."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control_plane.orchestration.catchup import (
    CatchUp,
    CatchUpPolicy,
    Due,
    due_slots,
    validate_policy,
)
from control_plane.orchestration.schedules import (
    CronSchedule,
    IntervalSchedule,
    OnceSchedule,
    fire_times,
    slot_key,
    zone,
)
from meridian.core.errors import ValidationError

UTC = dt.UTC
HOURLY = IntervalSchedule(dt.timedelta(hours=1), dt.datetime(2026, 1, 1, tzinfo=UTC))


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=UTC)


class FakeClock:
    """Time that moves only when the test says so."""

    def __init__(self, start: dt.datetime) -> None:
        self.now = start

    def advance(self, delta: dt.timedelta) -> dt.datetime:
        self.now += delta
        return self.now


def run_dispatcher(
    schedule: CronSchedule | IntervalSchedule | OnceSchedule,
    policy: CatchUpPolicy,
    clock: FakeClock,
    until: dt.datetime,
    tick: dt.timedelta,
    cursor: dt.datetime | None = None,
) -> list[dt.datetime]:
    """Evaluate the schedule at every tick, the way the dispatcher will; return what fired."""
    cursor = cursor or clock.now
    fired: list[dt.datetime] = []
    while clock.now < until:
        clock.advance(tick)
        due = due_slots(schedule, policy, cursor, clock.now)
        fired.extend(due.fire)
        cursor = due.cursor
    return fired


@pytest.mark.parametrize(
    ("timezone", "day", "expected_local"),
    [
        # The gap: 02:30 does not exist; the slot fires at the end of the gap.
        ("Europe/Berlin", dt.date(2026, 3, 29), "2026-03-29T03:00:00+02:00"),
        ("America/New_York", dt.date(2026, 3, 8), "2026-03-08T03:00:00-04:00"),
        # The overlap: 02:30 happens twice in Berlin; only the first occurrence fires.
        ("Europe/Berlin", dt.date(2026, 10, 25), "2026-10-25T02:30:00+02:00"),
        # New York repeats 01:00-02:00, so its 02:30 is an ordinary time that day.
        ("America/New_York", dt.date(2026, 11, 1), "2026-11-01T02:30:00-05:00"),
    ],
)
def test_daily_0230_fires_once_on_dst_days_with_a_ticking_clock(
    timezone: str, day: dt.date, expected_local: str
) -> None:
    tz = zone(timezone)
    start = dt.datetime.combine(day, dt.time(), tz).astimezone(UTC)
    clock = FakeClock(start)
    schedule = CronSchedule("30 2 * * *", timezone)
    fired = run_dispatcher(
        schedule, CatchUpPolicy(), clock, start + dt.timedelta(hours=25), dt.timedelta(seconds=60)
    )
    assert [f.astimezone(tz).isoformat() for f in fired] == [expected_local]


def test_on_time_slot_fires_under_every_policy() -> None:
    for mode in CatchUp:
        due = due_slots(
            HOURLY, CatchUpPolicy(mode), utc(2026, 1, 1, 2, 59), utc(2026, 1, 1, 3, 0, 5)
        )
        assert due == Due((utc(2026, 1, 1, 3),), utc(2026, 1, 1, 3, 0, 5))


def test_nothing_due_moves_the_cursor_to_now() -> None:
    due = due_slots(HOURLY, CatchUpPolicy(), utc(2026, 1, 1, 3, 1), utc(2026, 1, 1, 3, 30))
    assert due == Due((), utc(2026, 1, 1, 3, 30))


def test_a_clock_behind_the_cursor_changes_nothing() -> None:
    due = due_slots(HOURLY, CatchUpPolicy(), utc(2026, 1, 1, 4), utc(2026, 1, 1, 3))
    assert due == Due((), utc(2026, 1, 1, 4))


# Down from 03:30 to 08:20: slots 04:00 .. 08:00 were missed.
DOWN_FROM, BACK_AT = utc(2026, 1, 1, 3, 30), utc(2026, 1, 1, 8, 20)


def test_skip_fires_nothing_missed() -> None:
    due = due_slots(HOURLY, CatchUpPolicy(CatchUp.SKIP), DOWN_FROM, BACK_AT)
    assert due == Due((), BACK_AT, (DOWN_FROM, utc(2026, 1, 1, 8)))
    # ... and the schedule continues with its next slot.
    after = due_slots(HOURLY, CatchUpPolicy(CatchUp.SKIP), due.cursor, utc(2026, 1, 1, 9, 0, 1))
    assert after.fire == (utc(2026, 1, 1, 9),)


def test_skip_still_fires_a_slot_that_is_on_time() -> None:
    back = utc(2026, 1, 1, 8, 0, 30)
    due = due_slots(HOURLY, CatchUpPolicy(CatchUp.SKIP), DOWN_FROM, back)
    assert due == Due((utc(2026, 1, 1, 8),), back, (DOWN_FROM, utc(2026, 1, 1, 7)))


def test_latest_fires_only_the_most_recent_missed_slot() -> None:
    due = due_slots(HOURLY, CatchUpPolicy(CatchUp.LATEST), DOWN_FROM, BACK_AT)
    assert due == Due((utc(2026, 1, 1, 8),), BACK_AT, (DOWN_FROM, utc(2026, 1, 1, 7)))


def test_all_fires_every_missed_slot_oldest_first() -> None:
    due = due_slots(HOURLY, CatchUpPolicy(CatchUp.ALL), DOWN_FROM, BACK_AT)
    assert due.fire == tuple(utc(2026, 1, 1, h) for h in range(4, 9))
    assert due.cursor == BACK_AT
    assert due.skipped is None


def test_all_is_bounded_by_its_window() -> None:
    policy = CatchUpPolicy(CatchUp.ALL, window=dt.timedelta(hours=2, minutes=30))
    due = due_slots(HOURLY, policy, DOWN_FROM, BACK_AT)
    assert due.fire == (utc(2026, 1, 1, 6), utc(2026, 1, 1, 7), utc(2026, 1, 1, 8))
    assert due.skipped == (DOWN_FROM, BACK_AT - policy.window)


def test_all_spreads_a_capped_backfill_over_evaluations_without_losing_a_slot() -> None:
    policy = CatchUpPolicy(CatchUp.ALL, max_runs=2)
    first = due_slots(HOURLY, policy, DOWN_FROM, BACK_AT)
    assert first.fire == (utc(2026, 1, 1, 4), utc(2026, 1, 1, 5))
    assert first.cursor == utc(2026, 1, 1, 5)
    second = due_slots(HOURLY, policy, first.cursor, BACK_AT)
    third = due_slots(HOURLY, policy, second.cursor, BACK_AT)
    assert second.fire + third.fire == tuple(utc(2026, 1, 1, h) for h in range(6, 9))
    assert third.cursor == BACK_AT


def test_slots_older_than_the_window_never_fire() -> None:
    policy = CatchUpPolicy(CatchUp.LATEST, window=dt.timedelta(minutes=10))
    due = due_slots(HOURLY, policy, DOWN_FROM, BACK_AT)
    assert due == Due((), BACK_AT, (DOWN_FROM, BACK_AT - dt.timedelta(minutes=10)))


def test_a_one_off_date_missed_during_downtime() -> None:
    once = OnceSchedule(utc(2026, 1, 1, 5))
    assert due_slots(once, CatchUpPolicy(CatchUp.SKIP), DOWN_FROM, BACK_AT).fire == ()
    assert due_slots(once, CatchUpPolicy(CatchUp.LATEST), DOWN_FROM, BACK_AT).fire == (
        utc(2026, 1, 1, 5),
    )


def test_every_policy_catches_up_across_a_restart_with_a_fake_clock() -> None:
    # Every 5 s; evaluations every second; down between 00:00:12 and 00:00:41.
    every_5s = IntervalSchedule(dt.timedelta(seconds=5), utc(2026, 1, 1))
    results = {}
    for mode in CatchUp:
        policy = CatchUpPolicy(mode, grace=dt.timedelta(seconds=1))
        clock = FakeClock(utc(2026, 1, 1))
        before = run_dispatcher(
            every_5s, policy, clock, utc(2026, 1, 1, 0, 0, 12), dt.timedelta(seconds=1)
        )
        cursor = clock.now
        clock.now = utc(2026, 1, 1, 0, 0, 41)  # restarted; the cursor survived in the store
        after = run_dispatcher(
            every_5s, policy, clock, utc(2026, 1, 1, 0, 1), dt.timedelta(seconds=1), cursor
        )
        results[mode] = [t.second for t in before + after]
    on_time_after = [45, 50, 55, 0]
    assert results[CatchUp.SKIP] == [5, 10, *on_time_after]
    assert results[CatchUp.LATEST] == [5, 10, 40, *on_time_after]
    assert results[CatchUp.ALL] == [5, 10, 15, 20, 25, 30, 35, 40, *on_time_after]


@settings(max_examples=50, deadline=None)
@given(
    mode=st.sampled_from(list(CatchUp)),
    ticks=st.lists(st.integers(min_value=1, max_value=4 * 3600), min_size=1, max_size=30),
    max_runs=st.integers(min_value=1, max_value=5),
)
def test_no_slot_ever_fires_twice_and_all_loses_none_in_its_window(
    mode: CatchUp, ticks: list[int], max_runs: int
) -> None:
    schedule = CronSchedule("*/20 * * * *", "Europe/Berlin")
    policy = CatchUpPolicy(mode, window=dt.timedelta(hours=6), max_runs=max_runs)
    start = utc(2026, 10, 24, 22)
    cursor, now = start, start
    fired: list[dt.datetime] = []
    for seconds in ticks:
        now += dt.timedelta(seconds=seconds)
        due = due_slots(schedule, policy, cursor, now)
        assert all(cursor < slot <= now for slot in due.fire)
        assert len(due.fire) <= (max_runs if mode is CatchUp.ALL else 1)
        fired.extend(due.fire)
        cursor = due.cursor
    keys = [slot_key("sch_1", slot) for slot in fired]
    assert len(keys) == len(set(keys))
    assert fired == sorted(fired)
    if mode is CatchUp.ALL and cursor == now:
        # Nothing inside the last window was lost to the cap.
        expected = fire_times(schedule, max(start, now - policy.window), now)
        assert set(expected) <= set(fired)


@pytest.mark.parametrize(
    ("policy", "fragment"),
    [
        (CatchUpPolicy(window=dt.timedelta(0)), "window must be more than 0"),
        (CatchUpPolicy(window=dt.timedelta(days=32)), "at most 31 days"),
        (CatchUpPolicy(max_runs=0), "max_runs must be between 1 and 1000"),
        (CatchUpPolicy(grace=dt.timedelta(seconds=-1)), "grace must be between"),
        (CatchUpPolicy(mode="sometimes"), "must be one of skip, latest, all"),  # type: ignore[arg-type]
    ],
)
def test_invalid_policies_are_refused(policy: CatchUpPolicy, fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        validate_policy(policy)
    assert fragment in str(info.value)
