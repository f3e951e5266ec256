"""When a schedule fires: cron in an IANA time zone, intervals from an anchor, one-off dates.

Pure: the caller passes every instant (no clock) and gets aware UTC datetimes back. The
dispatcher will ask for the fire times in ``(after, until]``, the store keeps one row per
:func:`slot_key` (unique), and a slot's run starts at its nominal time plus :func:`jitter`.

**Cron is wall-clock time.** A cron schedule fires once for each local wall-clock time its
expression matches in its zone (5 fields, minute precision, or an alias such as ``@daily``).
Daylight-saving transitions are resolved per matched wall time:

* **Gap (spring forward).** A wall time that does not exist that day (02:30 in
  ``Europe/Berlin`` on 2026-03-29) fires at the first valid instant after the gap: the
  transition itself (03:00 local, 01:00 UTC). Several wall times in the same gap, or a gap
  time and the wall time at the gap's end, collapse into one slot, so the day's 02:30 fires
  exactly once.
* **Overlap (fall back).** A wall time that occurs twice (02:30 in ``Europe/Berlin`` on
  2026-10-25) fires at its first occurrence only.

A consequence worth knowing: ``0 * * * *`` does not fire a second time during the repeated
hour of a fall-back night. Schedules that need equal elapsed time between runs should be
intervals (or cron in ``UTC``). An interval is elapsed time: ``anchor + k * every`` for
k = 0, 1, 2, ...; it ignores DST. A one-off fires once, at its instant.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, CroniterError, croniter

from meridian.core.errors import ValidationError

UTC = dt.UTC
MIN_INTERVAL = dt.timedelta(seconds=1)
MAX_INTERVAL = dt.timedelta(days=3660)
MAX_WINDOW = dt.timedelta(days=31)
MAX_FIRES = 10_000
MAX_NEXT = 100
MAX_JITTER = dt.timedelta(hours=1)
MAX_EXPRESSION = 200
_CRON_ALIASES = frozenset(
    {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
)
_SCHEDULE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
_YEAR_MIN, _YEAR_MAX = 1971, 9998  # leave room for arithmetic at the edges of datetime


@dataclass(frozen=True)
class CronSchedule:
    """A cron expression evaluated in the wall-clock time of an IANA zone."""

    expression: str
    timezone: str = "UTC"


@dataclass(frozen=True)
class IntervalSchedule:
    """Fires at ``anchor``, ``anchor + every``, ``anchor + 2 * every``, ... (elapsed time)."""

    every: dt.timedelta
    anchor: dt.datetime


@dataclass(frozen=True)
class OnceSchedule:
    """Fires once, at ``at``."""

    at: dt.datetime


Schedule = CronSchedule | IntervalSchedule | OnceSchedule


def validate_schedule(schedule: Schedule) -> None:
    """Raise :class:`ValidationError` saying what is wrong with ``schedule``."""
    if isinstance(schedule, CronSchedule):
        _validate_cron(schedule)
    elif isinstance(schedule, IntervalSchedule):
        _check_aware("interval anchor", schedule.anchor)
        if schedule.every < MIN_INTERVAL:
            raise ValidationError(
                f"interval must be at least {_human(MIN_INTERVAL)}, got {_human(schedule.every)}"
            )
        if schedule.every > MAX_INTERVAL:
            raise ValidationError(
                f"interval must be at most {MAX_INTERVAL.days} days, got {_human(schedule.every)}"
            )
    elif isinstance(schedule, OnceSchedule):
        _check_aware("one-off date", schedule.at)
    else:
        raise ValidationError(f"unknown schedule kind {type(schedule).__name__}")


def zone(name: str) -> ZoneInfo:
    """The IANA zone ``name`` (``Europe/Berlin``), or a clear error."""
    if not name or len(name) > 64 or name.startswith("/") or ".." in name:
        raise ValidationError(f"unknown time zone {name!r}; use an IANA name like 'Europe/Berlin'")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError(
            f"unknown time zone {name!r}; use an IANA name like 'Europe/Berlin'"
        ) from None


def _validate_cron(schedule: CronSchedule) -> None:
    expression = schedule.expression.strip()
    shown = expression[:MAX_EXPRESSION]
    if not expression or len(expression) > MAX_EXPRESSION:
        raise ValidationError(f"cron expression must be 1 to {MAX_EXPRESSION} characters")
    if expression.startswith("@"):
        if expression.lower() not in _CRON_ALIASES:
            aliases = ", ".join(sorted(_CRON_ALIASES))
            raise ValidationError(f"unknown cron alias {shown!r}; use one of {aliases}")
    elif len(expression.split()) != 5:
        raise ValidationError(
            f"cron expression {shown!r} must have 5 fields: minute hour day-of-month month "
            "day-of-week (seconds and years are not supported)"
        )
    elif any(
        item.strip().upper().startswith(("R", "H"))
        for field in expression.split()
        for item in field.split(",")
    ):
        # croniter's R (random) and H (hashed) would make fire times differ between callers;
        # no month or weekday name starts with either letter.
        raise ValidationError(f"cron expression {shown!r}: R and H fields are not supported")
    if not croniter.is_valid(expression):
        raise ValidationError(f"invalid cron expression {shown!r}")
    zone(schedule.timezone)
    try:
        croniter(expression, dt.datetime(2000, 1, 1)).get_next(dt.datetime)
    except CroniterBadDateError:
        raise ValidationError(f"cron expression {shown!r} never fires") from None
    except CroniterError as exc:
        raise ValidationError(f"invalid cron expression {shown!r}: {exc}") from None


def _check_aware(what: str, value: dt.datetime) -> None:
    if not isinstance(value, dt.datetime):
        raise ValidationError(f"{what} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValidationError(
            f"{what} {value.isoformat()} has no time zone; give an offset or a zone "
            "(2026-03-01T09:00:00+01:00)"
        )
    if not _YEAR_MIN <= value.year <= _YEAR_MAX:
        raise ValidationError(f"{what} {value.isoformat()} is outside {_YEAR_MIN}-{_YEAR_MAX}")


def fire_times(
    schedule: Schedule, after: dt.datetime, until: dt.datetime, *, limit: int = MAX_FIRES
) -> tuple[dt.datetime, ...]:
    """The nominal fire times in ``(after, until]``, oldest first, at most ``limit`` of them.

    Raises :class:`ValidationError` when the window is reversed or longer than
    :data:`MAX_WINDOW` (a caller catching up over a long outage bounds its window first).
    """
    _check_aware("window start", after)
    _check_aware("window end", until)
    if until < after:
        raise ValidationError(f"window ends ({until.isoformat()}) before it starts")
    if until - after > MAX_WINDOW:
        raise ValidationError(
            f"window of {_human(until - after)} is longer than {MAX_WINDOW.days} days"
        )
    if not 0 < limit <= MAX_FIRES:
        raise ValidationError(f"limit must be between 1 and {MAX_FIRES}, got {limit}")
    found: list[dt.datetime] = []
    for instant in iter_fires(schedule, after):
        if instant > until or len(found) == limit:
            break
        found.append(instant)
    return tuple(found)


def next_fire_times(schedule: Schedule, after: dt.datetime, count: int) -> tuple[dt.datetime, ...]:
    """The next ``count`` fire times strictly after ``after`` (fewer if the schedule ends)."""
    _check_aware("start", after)
    if not 0 < count <= MAX_NEXT:
        raise ValidationError(f"count must be between 1 and {MAX_NEXT}, got {count}")
    found: list[dt.datetime] = []
    for instant in iter_fires(schedule, after):
        found.append(instant)
        if len(found) == count:
            break
    return tuple(found)


def iter_fires(schedule: Schedule, after: dt.datetime) -> Iterator[dt.datetime]:
    """Every fire time strictly after ``after``, increasing, as aware UTC datetimes.

    Possibly infinite: callers bound it (``fire_times``, ``next_fire_times``).
    """
    validate_schedule(schedule)
    _check_aware("start", after)
    after = after.astimezone(UTC)
    if isinstance(schedule, OnceSchedule):
        at = schedule.at.astimezone(UTC)
        if at > after:
            yield at
    elif isinstance(schedule, IntervalSchedule):
        yield from _interval_fires(schedule, after)
    else:
        yield from _cron_fires(schedule, after)


def _interval_fires(schedule: IntervalSchedule, after: dt.datetime) -> Iterator[dt.datetime]:
    anchor = schedule.anchor.astimezone(UTC)
    # Whole microseconds, so a long-running interval never drifts by float rounding.
    step = _micros(schedule.every)
    k = 0 if after < anchor else _micros(after - anchor) // step + 1
    while True:
        instant = anchor + dt.timedelta(microseconds=k * step)
        if instant.year > _YEAR_MAX:
            return
        yield instant
        k += 1


def _cron_fires(schedule: CronSchedule, after: dt.datetime) -> Iterator[dt.datetime]:
    tz = zone(schedule.timezone)
    # Walk wall-clock times with a naive croniter (no DST inside croniter at all) and map
    # each to an instant. The mapping never decreases, so starting from the wall time of
    # ``after`` (which maps to ``after`` or, inside an overlap, earlier) misses nothing.
    start = after.astimezone(tz).replace(tzinfo=None, fold=0)
    walker = croniter(schedule.expression.strip(), start)
    last: dt.datetime | None = None
    while True:
        try:
            wall = walker.get_next(dt.datetime)
        except CroniterBadDateError:
            return
        if wall.year > _YEAR_MAX:
            return
        instant = wall_to_instant(wall, tz)
        if instant > after and instant != last:
            last = instant
            yield instant


def previous_fire(
    schedule: Schedule, at: dt.datetime, not_before: dt.datetime
) -> dt.datetime | None:
    """The latest fire time in ``(not_before, at]``, or None.

    Costs O(1) for intervals and one-offs and a backward walk over ``(not_before, at]`` at
    worst for cron, so a caller catching up over a long outage need not list every slot.
    """
    validate_schedule(schedule)
    _check_aware("window start", not_before)
    _check_aware("window end", at)
    at, not_before = at.astimezone(UTC), not_before.astimezone(UTC)
    found: dt.datetime | None
    if isinstance(schedule, OnceSchedule):
        found = schedule.at.astimezone(UTC)
        found = found if found <= at else None
    elif isinstance(schedule, IntervalSchedule):
        anchor = schedule.anchor.astimezone(UTC)
        step = _micros(schedule.every)
        found = None
        if at >= anchor:
            found = anchor + dt.timedelta(microseconds=_micros(at - anchor) // step * step)
    else:
        found = _cron_previous(schedule, at, not_before)
    return found if found is not None and found > not_before else None


def _cron_previous(
    schedule: CronSchedule, at: dt.datetime, not_before: dt.datetime
) -> dt.datetime | None:
    tz = zone(schedule.timezone)
    # A wall time W maps to at most W minus the zone's largest nearby offset, so no wall time
    # after ``at + that offset`` can map to ``at`` or before; walk back from there. (Only
    # inside an overlap does this start later than the wall time of ``at``.)
    nearby = (at + dt.timedelta(days=d) for d in (-1, 0, 1))
    largest = max(_offset(moment, tz) for moment in nearby)
    start = (at + largest).replace(tzinfo=None) + dt.timedelta(seconds=1)
    walker = croniter(schedule.expression.strip(), start)
    floor = not_before.astimezone(tz).replace(tzinfo=None) - dt.timedelta(days=1)
    while True:
        try:
            wall = walker.get_prev(dt.datetime)
        except CroniterBadDateError:
            return None
        if wall < floor:
            return None
        instant = wall_to_instant(wall, tz)
        if instant <= at:
            return instant


def _offset(moment: dt.datetime, tz: ZoneInfo) -> dt.timedelta:
    offset = moment.astimezone(tz).utcoffset()
    return offset if offset is not None else dt.timedelta(0)


def wall_to_instant(wall: dt.datetime, tz: ZoneInfo) -> dt.datetime:
    """The UTC instant a naive wall time in ``tz`` stands for, by the rules above.

    An ordinary time maps to itself; a time inside an overlap to its first occurrence; a
    time inside a gap to the first instant after the gap (the transition).
    """
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
    if first <= second:
        # Equal: an ordinary time. Less: an overlap, and fold=0 is the earlier occurrence.
        return first
    # A gap: zoneinfo reads fold=0 with the offset before the transition (``first`` lies
    # after it) and fold=1 with the offset after it (``second`` lies before it). Find the
    # transition by bisection on whole seconds: the first instant whose wall time is past
    # ``wall``.
    lo, hi = second, first
    while hi - lo > dt.timedelta(seconds=1):
        mid = lo + (hi - lo) // 2
        mid = mid.replace(microsecond=0)
        if mid.astimezone(tz).replace(tzinfo=None) > wall:
            hi = mid
        else:
            lo = mid
    return hi


def slot_key(schedule_id: str, nominal: dt.datetime) -> str:
    """The stable key of one slot: unique per (schedule, nominal fire time).

    ``sch_7f3a/2026-03-29T01:00:00.000000Z``: the store makes it unique per deployment, so a
    slot creates its run at most once whatever restarts or replicas do.
    """
    if not _SCHEDULE_ID.fullmatch(schedule_id):
        raise ValidationError(
            f"schedule id {schedule_id[:80]!r} must be 1-64 letters, digits, '_', '.', ':' or "
            "'-', starting with a letter or digit"
        )
    _check_aware("slot time", nominal)
    return f"{schedule_id}/{nominal.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%S.%fZ')}"


def jitter(
    key: str, max_jitter: dt.timedelta, until_next: dt.timedelta | None = None
) -> dt.timedelta:
    """A deterministic delay in ``[0, max_jitter)`` for the slot ``key``.

    Derived from a hash of the key, so every replica and every restart agrees on it, and
    strictly less than ``until_next`` (the time to the schedule's next nominal slot), so a
    jittered run never starts after its successor's nominal time. Never negative: a slot
    never starts before its nominal time.
    """
    if max_jitter < dt.timedelta(0) or max_jitter > MAX_JITTER:
        raise ValidationError(f"jitter must be between 0 and {_human(MAX_JITTER)}")
    bound = max_jitter if until_next is None else min(max_jitter, until_next)
    micros = _micros(bound)
    if micros <= 0:
        return dt.timedelta(0)
    fraction = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return dt.timedelta(microseconds=fraction * micros >> 64)


def _micros(delta: dt.timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _human(delta: dt.timedelta) -> str:
    seconds = delta.total_seconds()
    if abs(seconds) < 120:
        return f"{seconds:g} s"
    if abs(seconds) < 7200:
        return f"{seconds / 60:g} min"
    if abs(seconds) < 172_800:
        return f"{seconds / 3600:g} h"
    return f"{seconds / 86_400:g} days"
