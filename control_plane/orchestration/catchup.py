"""Which slots of a schedule to fire now, after a normal wake-up or after downtime.

The dispatcher keeps, per schedule, the instant it has evaluated the schedule through (the
cursor, stored in the transaction that creates the runs). At each evaluation it passes the
cursor and ``now`` and gets back the nominal slots to fire, oldest first, and the new cursor.
Pure: no clock, no store.

The most recent slot in ``(cursor, now]`` is **on time** when it is at most ``grace`` old: it
fires under every policy (a dispatcher that wakes a little late has missed nothing). Every
other slot in the window was **missed** (the control plane was down, or paused past it), and
the policy decides:

* ``skip``: fire no missed slot; the schedule continues with its next slot.
* ``latest``: fire only the most recent missed slot (one run "catches up" for the outage).
* ``all``: fire every missed slot no older than ``window``, oldest first, at most
  ``max_runs`` per evaluation; when more are due the cursor stops at the last one fired and
  the next evaluation continues from there, so the cap spreads a backfill over evaluations
  without dropping any slot inside the window.

Slots older than ``window`` are never fired under any policy: after a week-long outage
nobody wants a week of hourly runs started at once.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum

from control_plane.orchestration.schedules import (
    MAX_WINDOW,
    Schedule,
    fire_times,
    previous_fire,
)
from meridian.core.errors import ValidationError

MAX_RUNS_PER_EVALUATION = 1000
MAX_GRACE = dt.timedelta(days=1)


class CatchUp(StrEnum):
    SKIP = "skip"
    LATEST = "latest"
    ALL = "all"


@dataclass(frozen=True)
class CatchUpPolicy:
    """What to do with slots that passed while nothing fired them.

    Attributes:
        mode: ``skip``, ``latest`` or ``all`` (module docstring).
        window: how far back before ``now`` a missed slot may still fire.
        max_runs: with ``all``, the most slots fired by one evaluation.
        grace: how late the most recent slot may be and still count as on time.
    """

    mode: CatchUp = CatchUp.SKIP
    window: dt.timedelta = dt.timedelta(days=1)
    max_runs: int = 100
    grace: dt.timedelta = dt.timedelta(minutes=1)


@dataclass(frozen=True)
class Due:
    """The answer of one evaluation.

    Attributes:
        fire: nominal slot times to create runs for now, oldest first.
        cursor: store this as the schedule's "evaluated through" with the runs created.
        skipped: ``(after, until]``, the range in which any slot was left unfired (by the
            policy, or for being older than the window), for an event people can read; None
            when every slot since the cursor fired.
    """

    fire: tuple[dt.datetime, ...]
    cursor: dt.datetime
    skipped: tuple[dt.datetime, dt.datetime] | None = None


def validate_policy(policy: CatchUpPolicy) -> None:
    """Raise :class:`ValidationError` naming the first field that makes no sense."""
    if not isinstance(policy.mode, CatchUp):
        choices = ", ".join(m.value for m in CatchUp)
        raise ValidationError(f"catch-up policy must be one of {choices}, got {policy.mode!r}")
    if not dt.timedelta(0) < policy.window <= MAX_WINDOW:
        raise ValidationError(
            f"catch-up window must be more than 0 and at most {MAX_WINDOW.days} days"
        )
    if not 1 <= policy.max_runs <= MAX_RUNS_PER_EVALUATION:
        raise ValidationError(
            f"catch-up max_runs must be between 1 and {MAX_RUNS_PER_EVALUATION}, "
            f"got {policy.max_runs}"
        )
    if not dt.timedelta(0) <= policy.grace <= MAX_GRACE:
        raise ValidationError("catch-up grace must be between 0 and 1 day")


def due_slots(
    schedule: Schedule, policy: CatchUpPolicy, cursor: dt.datetime, now: dt.datetime
) -> Due:
    """The slots of ``schedule`` to fire at ``now``, given it was evaluated through ``cursor``."""
    validate_policy(policy)
    if now <= cursor:
        return Due((), cursor)
    lower = max(cursor, now - policy.window)
    latest = previous_fire(schedule, now, lower)
    if latest is None:
        return Due((), now, _skipped_window(cursor, lower))
    on_time = now - latest <= policy.grace
    if policy.mode is CatchUp.ALL:
        slots = fire_times(schedule, lower, now, limit=policy.max_runs)
        cursor_after = slots[-1] if slots[-1] < latest else now
        return Due(slots, cursor_after, _skipped_window(cursor, lower))
    if policy.mode is CatchUp.LATEST or on_time:
        earlier = previous_fire(schedule, latest - dt.timedelta(microseconds=1), lower)
        until = earlier if earlier is not None else lower
        return Due((latest,), now, (cursor, until) if until > cursor else None)
    return Due((), now, (cursor, latest))


def _skipped_window(
    cursor: dt.datetime, lower: dt.datetime
) -> tuple[dt.datetime, dt.datetime] | None:
    # Slots between the cursor and the window's start are older than the window: never fired.
    return (cursor, lower) if lower > cursor else None
