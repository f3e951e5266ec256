"""Schedules as JSON objects (what the store keeps and the API carries) and as one line of text
(what people read in ``deployments show``).

``{"kind": "cron", "cron": "30 2 * * *", "timezone": "Europe/Berlin"}``,
``{"kind": "interval", "every_seconds": 300, "anchor": "2026-01-01T00:00:00+00:00"}``,
``{"kind": "once", "at": "2026-05-01T09:00:00+02:00"}``. Decoding refuses unknown kinds and
fields, times without an offset and anything :func:`validate_schedule` refuses, with a message
naming the field.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from typing import Any

from control_plane.orchestration.schedules import (
    CronSchedule,
    IntervalSchedule,
    OnceSchedule,
    Schedule,
    validate_schedule,
)
from meridian.core.errors import ValidationError

_FIELDS = {
    "cron": frozenset({"kind", "cron", "timezone"}),
    "interval": frozenset({"kind", "every_seconds", "anchor"}),
    "once": frozenset({"kind", "at"}),
}
_MAX_TEXT = 200


def encode_schedule(schedule: Schedule) -> dict[str, Any]:
    """The JSON object of a valid schedule; :func:`decode_schedule` gives it back."""
    validate_schedule(schedule)
    if isinstance(schedule, CronSchedule):
        return {"kind": "cron", "cron": schedule.expression.strip(), "timezone": schedule.timezone}
    if isinstance(schedule, IntervalSchedule):
        micros = schedule.every // dt.timedelta(microseconds=1)
        seconds: int | float = micros // 1_000_000 if micros % 1_000_000 == 0 else micros / 1e6
        return {"kind": "interval", "every_seconds": seconds, "anchor": schedule.anchor.isoformat()}
    return {"kind": "once", "at": schedule.at.isoformat()}


def decode_schedule(data: Mapping[str, Any]) -> Schedule:
    """A schedule from its JSON object, validated."""
    if not isinstance(data, Mapping):
        raise ValidationError(f"a schedule must be a JSON object, got {type(data).__name__}")
    kind = data.get("kind")
    if kind not in _FIELDS:
        raise ValidationError(f"schedule kind must be cron, interval or once, got {_shown(kind)}")
    unknown = sorted(str(key)[:40] for key in data if key not in _FIELDS[kind])
    if unknown:
        raise ValidationError(f"unknown field(s) for a {kind} schedule: {', '.join(unknown)}")
    schedule: Schedule
    if kind == "cron":
        timezone = data.get("timezone", "UTC")
        schedule = CronSchedule(_text(data, "cron"), _text({"timezone": timezone}, "timezone"))
    elif kind == "interval":
        schedule = IntervalSchedule(_seconds(data.get("every_seconds")), _instant(data, "anchor"))
    else:
        schedule = OnceSchedule(_instant(data, "at"))
    validate_schedule(schedule)
    return schedule


def describe_schedule(schedule: Schedule) -> str:
    """One line for people: ``cron '30 2 * * *' in Europe/Berlin``."""
    if isinstance(schedule, CronSchedule):
        return f"cron {schedule.expression.strip()!r} in {schedule.timezone}"
    if isinstance(schedule, IntervalSchedule):
        return f"every {_duration(schedule.every)} from {schedule.anchor.isoformat()}"
    return f"once at {schedule.at.isoformat()}"


def _text(data: Mapping[str, Any], field: str) -> str:
    value = data.get(field)
    if not isinstance(value, str) or not value or len(value) > _MAX_TEXT:
        raise ValidationError(
            f"schedule field {field!r} must be a string of 1 to {_MAX_TEXT} characters"
        )
    return value


def _seconds(value: Any) -> dt.timedelta:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValidationError(
            f"schedule field 'every_seconds' must be a number, got {_shown(value)}"
        )
    if abs(value) > 1e12:
        raise ValidationError("schedule field 'every_seconds' is out of range")
    return dt.timedelta(microseconds=round(value * 1_000_000))


def _instant(data: Mapping[str, Any], field: str) -> dt.datetime:
    text = _text(data, field)
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValidationError(
            f"schedule field {field!r} must be an ISO 8601 date and time, got {_shown(text)}"
        ) from None
    if value.tzinfo is None:
        raise ValidationError(
            f"schedule field {field!r} ({text}) has no time zone; add an offset or Z"
        )
    return value


def _duration(delta: dt.timedelta) -> str:
    seconds = delta.total_seconds()
    for unit, size in (("d", 86_400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)} {unit}"
    return f"{seconds:g} s"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
