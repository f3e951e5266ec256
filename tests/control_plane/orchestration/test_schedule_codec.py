"""Schedules to and from their JSON objects, and their one-line descriptions."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from control_plane.orchestration.schedule_codec import (
    decode_schedule,
    describe_schedule,
    encode_schedule,
)
from control_plane.orchestration.schedules import (
    CronSchedule,
    IntervalSchedule,
    OnceSchedule,
    Schedule,
    zone,
)
from meridian.core.errors import ValidationError

UTC = dt.UTC
ANCHOR = dt.datetime(2026, 1, 1, tzinfo=UTC)
Z = "2026-01-01T00:00:00Z"


@pytest.mark.parametrize(
    ("schedule", "encoded", "described"),
    [
        (
            CronSchedule("30 2 * * *", "Europe/Berlin"),
            {"kind": "cron", "cron": "30 2 * * *", "timezone": "Europe/Berlin"},
            "cron '30 2 * * *' in Europe/Berlin",
        ),
        (
            IntervalSchedule(dt.timedelta(minutes=5), ANCHOR),
            {"kind": "interval", "every_seconds": 300, "anchor": "2026-01-01T00:00:00+00:00"},
            "every 5 min from 2026-01-01T00:00:00+00:00",
        ),
        (
            IntervalSchedule(dt.timedelta(seconds=1, microseconds=500_000), ANCHOR),
            {"kind": "interval", "every_seconds": 1.5, "anchor": "2026-01-01T00:00:00+00:00"},
            "every 1.5 s from 2026-01-01T00:00:00+00:00",
        ),
        (
            OnceSchedule(dt.datetime(2026, 5, 1, 9, tzinfo=zone("Europe/Berlin"))),
            {"kind": "once", "at": "2026-05-01T09:00:00+02:00"},
            "once at 2026-05-01T09:00:00+02:00",
        ),
    ],
)
def test_round_trip_through_json(
    schedule: Schedule, encoded: dict[str, Any], described: str
) -> None:
    assert encode_schedule(schedule) == encoded
    decoded = decode_schedule(json.loads(json.dumps(encoded)))
    assert encode_schedule(decoded) == encoded
    assert describe_schedule(decoded) == described


def test_cron_timezone_defaults_to_utc() -> None:
    assert decode_schedule({"kind": "cron", "cron": "@daily"}) == CronSchedule("@daily", "UTC")


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ([], "must be a JSON object, got list"),
        ({"kind": "weekly"}, "kind must be cron, interval or once, got 'weekly'"),
        ({"kind": "cron", "cron": "@daily", "tz": "UTC"}, "unknown field(s) for a cron schedule"),
        ({"kind": "cron", "cron": 5}, "field 'cron' must be a string"),
        ({"kind": "cron", "cron": "@daily", "timezone": "Nowhere/Else"}, "unknown time zone"),
        ({"kind": "cron", "cron": "99 * * * *"}, "invalid cron expression"),
        ({"kind": "interval", "every_seconds": "300", "anchor": Z}, "must be a number"),
        ({"kind": "interval", "every_seconds": True, "anchor": Z}, "must be a number"),
        ({"kind": "interval", "every_seconds": 1e300, "anchor": Z}, "out of range"),
        ({"kind": "interval", "every_seconds": 0.1, "anchor": Z}, "at least 1 s"),
        ({"kind": "interval", "every_seconds": 60, "anchor": Z[:-1]}, "has no time zone"),
        ({"kind": "interval", "every_seconds": 60}, "field 'anchor' must be a string"),
        ({"kind": "once", "at": "next tuesday"}, "field 'at' must be an ISO 8601 date and time"),
    ],
)  # fmt: skip
def test_bad_objects_are_refused_naming_the_field(data: Any, fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        decode_schedule(data)
    assert fragment in str(info.value)
