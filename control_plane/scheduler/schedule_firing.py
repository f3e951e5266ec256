"""The dispatcher's loop over due schedules, with failures isolated per schedule.

Each due schedule is fired in a transaction of its own (``usecases.schedules``, decision 0019).
A schedule whose evaluation raises (a bug, a row the code cannot read, a database error about
that one row) would otherwise stay the earliest due schedule and be retried first at every
pass, so the schedules after it would never fire. Instead it is held back in memory for a
growing while (the sweep interval, doubled per failure, at most five minutes), the failure is
logged and audited once per streak, and the loop goes on with the next due schedule. Holding
back loses nothing: the schedule's cursor did not move, so its slots fire (under its catch-up
policy) once an evaluation succeeds.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from control_plane.store.db import Store
from control_plane.usecases.schedules import (
    due_schedule,
    fire_schedule,
    next_schedule_due,
    record_evaluation_failure,
)

log = logging.getLogger(__name__)

# Schedules evaluated by one pass at most (one transaction each); more due: the next pass.
MAX_SCHEDULES_PER_PASS = 50
MAX_HOLD_BACK = dt.timedelta(minutes=5)


@dataclass
class _Failing:
    failures: int
    retry_at: dt.datetime


class ScheduleFiring:
    def __init__(self, store: Store, sweep_interval_s: float) -> None:
        self._store = store
        self._base = dt.timedelta(seconds=max(sweep_interval_s, 0.1))
        self._failing: dict[str, _Failing] = {}

    async def fire_due(self, now: dt.datetime) -> dt.datetime | None:
        """Fire the schedules due at ``now``; the time the next one is due (None: none is)."""
        held_back = {sid for sid, f in self._failing.items() if f.retry_at > now}
        busy: set[str] = set()  # locked by another replica, or fired by it just now
        for _ in range(MAX_SCHEDULES_PER_PASS):
            schedule_id = await self._store.run(due_schedule, now, held_back | busy)
            if schedule_id is None:
                following = await self._next_due(held_back | busy)
                if busy:  # look again shortly, in case that replica stopped half-way
                    soon = now + dt.timedelta(seconds=1)
                    return min(following, soon) if following is not None else soon
                return following
            try:
                evaluation = await self._store.transact(fire_schedule, schedule_id)
            except Exception as exc:
                await self._hold_back(schedule_id, now, exc)
                held_back.add(schedule_id)
                continue
            self._failing.pop(schedule_id, None)
            if evaluation is None:
                # Another replica holds it: go on with the next due one (replicas share the
                # due schedules instead of queueing on the same row).
                busy.add(schedule_id)
        return now  # more are due: the next pass goes on

    async def _next_due(self, held_back: set[str]) -> dt.datetime | None:
        due = await self._store.run(next_schedule_due, held_back)
        retries = [self._failing[sid].retry_at for sid in held_back if sid in self._failing]
        return min([t for t in (due, *retries) if t is not None], default=None)

    async def _hold_back(self, schedule_id: str, now: dt.datetime, exc: Exception) -> None:
        known = self._failing.get(schedule_id)
        failures = known.failures + 1 if known is not None else 1
        delay = min(self._base * 2 ** min(failures - 1, 16), MAX_HOLD_BACK)
        self._failing[schedule_id] = _Failing(failures, now + delay)
        log.error(
            "evaluating schedule %s failed (%d in a row); it is retried in %.0f s and the "
            "other schedules go on",
            schedule_id,
            failures,
            delay.total_seconds(),
            exc_info=exc,
        )
        if failures > 1:
            return  # audited once per streak
        try:
            error = f"{type(exc).__name__}: {exc}"
            await self._store.transact(
                record_evaluation_failure, schedule_id, error, delay.total_seconds()
            )
        except Exception:
            log.exception("could not audit the failure of schedule %s", schedule_id)
