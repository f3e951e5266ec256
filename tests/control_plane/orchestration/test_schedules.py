"""Fire times of cron, interval and one-off schedules; DST; slot keys; jitter; validation."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control_plane.orchestration.schedules import (
    MAX_JITTER,
    MAX_NEXT,
    MAX_WINDOW,
    CronSchedule,
    IntervalSchedule,
    OnceSchedule,
    Schedule,
    fire_times,
    jitter,
    next_fire_times,
    previous_fire,
    slot_key,
    validate_schedule,
    wall_to_instant,
    zone,
)
from meridian.core.errors import ValidationError

UTC = dt.UTC
BERLIN = zone("Europe/Berlin")
NEW_YORK = zone("America/New_York")


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def local_day(day: dt.date, tz: dt.tzinfo) -> tuple[dt.datetime, dt.datetime]:
    """The window (start of ``day``, start of the next day] in zone ``tz``, as instants."""
    start = dt.datetime.combine(day, dt.time(), tz).astimezone(UTC)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tz).astimezone(UTC)
    return start, end


def fires_on(schedule: CronSchedule, day: dt.date) -> list[str]:
    tz = zone(schedule.timezone)
    start, end = local_day(day, tz)
    return [t.astimezone(tz).isoformat() for t in fire_times(schedule, start, end)]


# --- cron and daylight saving time -------------------------------------------------------


@pytest.mark.parametrize(
    ("timezone", "day", "expected"),
    [
        # Spring forward: 02:00 -> 03:00, so 02:30 does not exist; it fires once, at the
        # first valid instant after the gap (03:00 local).
        ("Europe/Berlin", dt.date(2026, 3, 29), ["2026-03-29T03:00:00+02:00"]),
        ("America/New_York", dt.date(2026, 3, 8), ["2026-03-08T03:00:00-04:00"]),
        # Fall back: Berlin repeats 02:00-03:00, so 02:30 happens twice; it fires once, at
        # the first occurrence (still in summer time).
        ("Europe/Berlin", dt.date(2026, 10, 25), ["2026-10-25T02:30:00+02:00"]),
        # New York repeats 01:00-02:00; 02:30 happens once, after the overlap.
        ("America/New_York", dt.date(2026, 11, 1), ["2026-11-01T02:30:00-05:00"]),
        # Ordinary days on either side.
        ("Europe/Berlin", dt.date(2026, 3, 28), ["2026-03-28T02:30:00+01:00"]),
        ("Europe/Berlin", dt.date(2026, 3, 30), ["2026-03-30T02:30:00+02:00"]),
        ("America/New_York", dt.date(2026, 11, 2), ["2026-11-02T02:30:00-05:00"]),
    ],
)
def test_daily_0230_fires_once_on_dst_days(
    timezone: str, day: dt.date, expected: list[str]
) -> None:
    assert fires_on(CronSchedule("30 2 * * *", timezone), day) == expected


def test_new_york_overlap_fires_the_first_occurrence() -> None:
    schedule = CronSchedule("30 1 * * *", "America/New_York")
    assert fires_on(schedule, dt.date(2026, 11, 1)) == ["2026-11-01T01:30:00-04:00"]


def test_dst_instants_in_utc() -> None:
    # The same facts, as the UTC instants the store would hold.
    berlin = CronSchedule("30 2 * * *", "Europe/Berlin")
    assert fire_times(berlin, utc(2026, 3, 28, 12), utc(2026, 3, 29, 12)) == (utc(2026, 3, 29, 1),)
    assert fire_times(berlin, utc(2026, 10, 24, 12), utc(2026, 10, 25, 12)) == (
        utc(2026, 10, 25, 0, 30),
    )
    new_york = CronSchedule("30 2 * * *", "America/New_York")
    assert fire_times(new_york, utc(2026, 3, 8), utc(2026, 3, 9)) == (utc(2026, 3, 8, 7),)


def test_wall_times_in_one_gap_collapse_into_one_slot() -> None:
    # 02:00, 02:20 and 02:40 do not exist; with 03:00 they are all the transition instant.
    schedule = CronSchedule("*/20 2,3 * * *", "Europe/Berlin")
    assert fires_on(schedule, dt.date(2026, 3, 29)) == [
        "2026-03-29T03:00:00+02:00",
        "2026-03-29T03:20:00+02:00",
        "2026-03-29T03:40:00+02:00",
    ]


def test_hourly_cron_skips_the_repeated_hour() -> None:
    # Cron is wall-clock time: the repeated 02:00 fires once (documented; use an interval for
    # equal elapsed time).
    schedule = CronSchedule("0 * * * *", "Europe/Berlin")
    fired = fires_on(schedule, dt.date(2026, 10, 25))
    assert len(fired) == 24
    assert fired[0:3] == [
        "2026-10-25T01:00:00+02:00",
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T03:00:00+01:00",
    ]


def test_window_starting_inside_an_overlap_misses_nothing() -> None:
    # 00:45 UTC is 02:45 CEST (first pass); 01:45 UTC is 02:45 CET (second pass).
    schedule = CronSchedule("50 2 * * *", "Europe/Berlin")
    assert fire_times(schedule, utc(2026, 10, 25, 0, 45), utc(2026, 10, 25, 3)) == (
        utc(2026, 10, 25, 0, 50),
    )
    # After the first occurrence has fired, the second pass of the hour fires nothing more.
    assert fire_times(schedule, utc(2026, 10, 25, 1, 45), utc(2026, 10, 26, 0)) == ()


def test_wall_to_instant_rules() -> None:
    assert wall_to_instant(dt.datetime(2026, 3, 29, 2, 30), BERLIN) == utc(2026, 3, 29, 1)
    assert wall_to_instant(dt.datetime(2026, 10, 25, 2, 30), BERLIN) == utc(2026, 10, 25, 0, 30)
    assert wall_to_instant(dt.datetime(2026, 6, 1, 12, 0), BERLIN) == utc(2026, 6, 1, 10)
    assert wall_to_instant(dt.datetime(2026, 3, 8, 2, 59), NEW_YORK) == utc(2026, 3, 8, 7)


def test_cron_in_utc_and_aliases() -> None:
    assert next_fire_times(CronSchedule("@daily"), utc(2026, 1, 1, 5), 2) == (
        utc(2026, 1, 2),
        utc(2026, 1, 3),
    )
    weekdays = CronSchedule("0 9 * * mon-fri", "Europe/Berlin")
    # 2026-01-02 is a Friday: the next is Monday 2026-01-05 09:00 CET.
    assert next_fire_times(weekdays, utc(2026, 1, 2, 9), 1) == (utc(2026, 1, 5, 8),)


def test_window_is_exclusive_at_the_start_and_inclusive_at_the_end() -> None:
    schedule = CronSchedule("0 * * * *")
    assert fire_times(schedule, utc(2026, 1, 1, 1), utc(2026, 1, 1, 3)) == (
        utc(2026, 1, 1, 2),
        utc(2026, 1, 1, 3),
    )
    assert fire_times(schedule, utc(2026, 1, 1, 1), utc(2026, 1, 1, 1)) == ()


def test_fire_times_respects_its_limit() -> None:
    every_minute = CronSchedule("* * * * *")
    got = fire_times(every_minute, utc(2026, 1, 1), utc(2026, 1, 2), limit=3)
    assert got == (utc(2026, 1, 1, 0, 1), utc(2026, 1, 1, 0, 2), utc(2026, 1, 1, 0, 3))


def test_a_cron_that_matches_rarely_still_answers() -> None:
    leap_day = CronSchedule("0 0 29 2 *")
    assert next_fire_times(leap_day, utc(2026, 1, 1), 2) == (utc(2028, 2, 29), utc(2032, 2, 29))


# --- intervals and one-offs --------------------------------------------------------------


def test_interval_fires_from_its_anchor() -> None:
    schedule = IntervalSchedule(dt.timedelta(minutes=15), utc(2026, 1, 1, 0, 5))
    assert next_fire_times(schedule, utc(2026, 1, 1, 0, 20), 3) == (
        utc(2026, 1, 1, 0, 35),
        utc(2026, 1, 1, 0, 50),
        utc(2026, 1, 1, 1, 5),
    )
    # Before the anchor, the anchor is the first fire.
    assert next_fire_times(schedule, utc(2025, 12, 1), 1) == (utc(2026, 1, 1, 0, 5),)
    # A fire time equal to ``after`` is not "after" it.
    assert next_fire_times(schedule, utc(2026, 1, 1, 0, 35), 1) == (utc(2026, 1, 1, 0, 50),)


def test_interval_is_elapsed_time_across_dst() -> None:
    anchor = dt.datetime(2026, 3, 28, 2, 30, tzinfo=BERLIN)
    schedule = IntervalSchedule(dt.timedelta(days=1), anchor)
    fired = next_fire_times(schedule, anchor - dt.timedelta(seconds=1), 3)
    assert [t.astimezone(BERLIN).hour for t in fired] == [2, 3, 3]
    assert fired[1] - fired[0] == dt.timedelta(days=1)


def test_interval_never_drifts() -> None:
    schedule = IntervalSchedule(dt.timedelta(seconds=1, microseconds=1), utc(2026, 1, 1))
    (far,) = next_fire_times(schedule, utc(2026, 1, 1) + dt.timedelta(days=300), 1)
    assert (far - utc(2026, 1, 1)) % dt.timedelta(seconds=1, microseconds=1) == dt.timedelta(0)


def test_once_fires_once() -> None:
    schedule = OnceSchedule(dt.datetime(2026, 5, 1, 9, tzinfo=BERLIN))
    assert next_fire_times(schedule, utc(2026, 1, 1), 5) == (utc(2026, 5, 1, 7),)
    assert next_fire_times(schedule, utc(2026, 5, 1, 7), 5) == ()


# --- previous fire (what catch-up asks) --------------------------------------------------


@pytest.mark.parametrize(
    "schedule",
    [
        CronSchedule("30 2 * * *", "Europe/Berlin"),
        CronSchedule("*/7 * * * *", "America/New_York"),
        CronSchedule("0 * * * *", "Europe/Berlin"),
        IntervalSchedule(dt.timedelta(minutes=41), utc(2026, 3, 1, 0, 3)),
        OnceSchedule(utc(2026, 3, 29, 0, 59)),
    ],
)
@pytest.mark.parametrize(
    "at",
    [
        utc(2026, 3, 29, 1, 0),
        utc(2026, 3, 29, 3, 17),
        utc(2026, 10, 25, 0, 45),
        utc(2026, 10, 25, 1, 45),
        utc(2026, 11, 1, 5, 30),
        utc(2026, 11, 1, 6, 30),
    ],
)
def test_previous_fire_agrees_with_listing(schedule: Schedule, at: dt.datetime) -> None:
    lower = at - dt.timedelta(days=2)
    listed = fire_times(schedule, lower, at)
    assert previous_fire(schedule, at, lower) == (listed[-1] if listed else None)


def test_previous_fire_honours_its_lower_bound() -> None:
    schedule = CronSchedule("0 0 * * *")
    assert previous_fire(schedule, utc(2026, 1, 5, 12), utc(2026, 1, 5)) is None
    assert previous_fire(schedule, utc(2026, 1, 5, 12), utc(2026, 1, 4, 23)) == utc(2026, 1, 5)


@settings(max_examples=60, deadline=None)
@given(
    minutes=st.integers(min_value=0, max_value=60 * 24 * 300),
    expression=st.sampled_from(["30 2 * * *", "*/13 1-3 * * *", "0 0 * * sun"]),
    timezone=st.sampled_from(["Europe/Berlin", "America/New_York", "Australia/Lord_Howe"]),
)
def test_cron_fire_times_are_increasing_unique_and_agree(
    minutes: int, expression: str, timezone: str
) -> None:
    schedule = CronSchedule(expression, timezone)
    after = utc(2026, 1, 1) + dt.timedelta(minutes=minutes)
    until = after + dt.timedelta(days=9)
    listed = fire_times(schedule, after, until)
    assert all(a < b for a, b in itertools.pairwise(listed))
    assert all(after < t <= until for t in listed)
    shown = min(len(listed), MAX_NEXT)
    assert listed[:shown] == next_fire_times(schedule, after, MAX_NEXT)[:shown]
    assert previous_fire(schedule, until, after) == (listed[-1] if listed else None)


# --- slot keys and jitter ----------------------------------------------------------------


def test_slot_key_is_stable_and_zone_independent() -> None:
    instant = dt.datetime(2026, 3, 29, 3, 0, tzinfo=BERLIN)
    key = slot_key("sch_1", instant)
    assert key == "sch_1/2026-03-29T01:00:00.000000Z"
    assert slot_key("sch_1", utc(2026, 3, 29, 1)) == key
    assert slot_key("sch_2", instant) != key


@pytest.mark.parametrize("bad", ["", "has space", "a/b", "x" * 65, "-leading"])
def test_slot_key_refuses_bad_schedule_ids(bad: str) -> None:
    with pytest.raises(ValidationError, match="schedule id"):
        slot_key(bad, utc(2026, 1, 1))


def test_jitter_is_deterministic_and_bounded() -> None:
    keys = [slot_key("sch_1", utc(2026, 1, 1) + dt.timedelta(hours=h)) for h in range(200)]
    max_jitter = dt.timedelta(minutes=5)
    offsets = [jitter(key, max_jitter) for key in keys]
    assert offsets == [jitter(key, max_jitter) for key in keys]
    assert all(dt.timedelta(0) <= o < max_jitter for o in offsets)
    assert len(set(offsets)) > 150  # spread, not one value


@given(
    key=st.text(min_size=1, max_size=40),
    max_s=st.integers(min_value=0, max_value=3600),
    gap_us=st.integers(min_value=0, max_value=10**10),
)
def test_jitter_never_reaches_the_next_slot(key: str, max_s: int, gap_us: int) -> None:
    gap = dt.timedelta(microseconds=gap_us)
    offset = jitter(key, dt.timedelta(seconds=max_s), gap)
    assert offset >= dt.timedelta(0)
    assert offset == dt.timedelta(0) or offset < min(gap, dt.timedelta(seconds=max_s))


def test_jitter_refuses_absurd_bounds() -> None:
    with pytest.raises(ValidationError, match="jitter"):
        jitter("k", MAX_JITTER + dt.timedelta(seconds=1))
    with pytest.raises(ValidationError, match="jitter"):
        jitter("k", dt.timedelta(seconds=-1))


# --- validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schedule", "fragment"),
    [
        (CronSchedule("61 * * * *"), "invalid cron expression"),
        (CronSchedule("not cron"), "must have 5 fields"),
        (CronSchedule("* * * * * *"), "must have 5 fields"),
        (CronSchedule(""), "1 to 200 characters"),
        (CronSchedule("@reboot"), "unknown cron alias"),
        (CronSchedule("R * * * *"), "R and H fields"),
        (CronSchedule("H/5 * * * *"), "R and H fields"),
        (CronSchedule("0 0 31 4 *"), "never fires"),
        (CronSchedule("0 0 * * *", "Mars/Olympus"), "unknown time zone 'Mars/Olympus'"),
        (CronSchedule("0 0 * * *", "../etc/passwd"), "unknown time zone"),
        (CronSchedule("0 0 * * *", ""), "unknown time zone"),
        (IntervalSchedule(dt.timedelta(0), utc(2026, 1, 1)), "at least 1 s"),
        (IntervalSchedule(dt.timedelta(seconds=-5), utc(2026, 1, 1)), "at least 1 s"),
        (IntervalSchedule(dt.timedelta(milliseconds=500), utc(2026, 1, 1)), "at least 1 s"),
        (IntervalSchedule(dt.timedelta(days=4000), utc(2026, 1, 1)), "at most 3660 days"),
        (IntervalSchedule(dt.timedelta(hours=1), dt.datetime(2026, 1, 1)), "has no time zone"),
        (OnceSchedule(dt.datetime(2026, 1, 1, 9)), "one-off date 2026-01-01T09:00:00 has no"),
        (OnceSchedule(dt.datetime(1900, 1, 1, tzinfo=UTC)), "outside"),
    ],
)
def test_invalid_schedules_are_refused_clearly(schedule: Schedule, fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        validate_schedule(schedule)
    assert fragment in str(info.value)


def test_month_and_weekday_names_are_not_mistaken_for_r_or_h() -> None:
    validate_schedule(CronSchedule("0 0 * mar,apr thu,fri", "Europe/Berlin"))


def test_window_checks() -> None:
    schedule = CronSchedule("0 * * * *")
    with pytest.raises(ValidationError, match="longer than 31 days"):
        fire_times(schedule, utc(2026, 1, 1), utc(2026, 1, 1) + MAX_WINDOW + dt.timedelta(1))
    with pytest.raises(ValidationError, match="before it starts"):
        fire_times(schedule, utc(2026, 1, 2), utc(2026, 1, 1))
    with pytest.raises(ValidationError, match=r"window start .* has no time zone"):
        fire_times(schedule, dt.datetime(2026, 1, 1), utc(2026, 1, 2))
    with pytest.raises(ValidationError, match="count must be between 1 and 100"):
        next_fire_times(schedule, utc(2026, 1, 1), MAX_NEXT + 1)
