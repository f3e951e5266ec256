"""Watches committed changes for what telemetry counts: attempts and steps that ended, runs
that finished (and then exports their traces).

Chained after the dispatcher on ``Store.after_commit`` (it never edits a use case): each
commit's ``touched_runs`` are queued, and one task reads those runs' facts in batches
(``queries.run_facts``), so a burst of commits costs one query. What was already counted is
remembered per run (bounded, least recently touched forgotten first); a run that ended before
this process started is not counted again when something touches it later.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections import OrderedDict
from dataclasses import dataclass, field

from control_plane.orchestration.values import Effects
from control_plane.store.db import Store
from control_plane.telemetry.metrics import Metrics
from control_plane.telemetry.queries import RunFacts, run_facts
from control_plane.telemetry.tracing import RunTraceExporter
from meridian.core.states import TERMINAL_RUN

log = logging.getLogger(__name__)
BATCH = 200
REMEMBERED_RUNS = 10_000


@dataclass
class _Seen:
    attempts: set[str] = field(default_factory=set)
    steps: set[str] = field(default_factory=set)
    state: str = ""


class RunObserver:
    def __init__(
        self, store: Store, metrics: Metrics, exporter: RunTraceExporter | None = None
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._exporter = exporter
        self._pending: set[str] = set()
        self._wake = asyncio.Event()
        self._seen: OrderedDict[str, _Seen] = OrderedDict()
        self._started_at = store.clock()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def on_effects(self, effects: Effects) -> None:
        """An ``after_commit`` callback: note the touched runs (on the event loop)."""
        if effects.touched_runs and not self._stopping:
            self._pending |= effects.touched_runs
            self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="telemetry-observer")

    async def stop(self) -> None:
        """Count what is pending, then stop."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, timeout=10)
        if self._exporter is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._exporter.shutdown)

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = sorted(self._pending)[:BATCH]
                self._pending.difference_update(batch)
                try:
                    await self._observe(batch)
                except Exception:  # telemetry must never take the control plane down
                    log.exception("telemetry: observing %d run(s) failed", len(batch))
            if self._stopping:
                return

    async def _observe(self, run_ids: list[str]) -> None:
        facts = await self._store.run(run_facts, run_ids)
        finished = [run for run in facts if self._account(run)]
        if finished and self._exporter is not None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, self._exporter.export, finished)

    def _account(self, run: RunFacts) -> bool:
        """Observe what is new in ``run``; True when the run has just finished."""
        seen = self._seen.pop(run.id, None)
        if seen is None:
            seen = _Seen()
            if run.state in TERMINAL_RUN and _before(run.ended_at, self._started_at):
                seen.state = run.state  # ended before we started: counted by our predecessor
                seen.attempts = {a.id for a in run.attempts}
                seen.steps = {s.id for s in run.steps}
        self._seen[run.id] = seen
        while len(self._seen) > REMEMBERED_RUNS:
            self._seen.popitem(last=False)
        m = self._metrics
        for a in run.attempts:
            if a.ended_at is None or a.id in seen.attempts:
                continue
            seen.attempts.add(a.id)
            m.attempts_finished.labels(a.state, a.environment).inc()
            if a.started_at is not None:
                m.submit_to_start.labels(a.environment).observe(_seconds(a.queued_at, a.started_at))
                m.attempt_duration.labels(a.environment).observe(_seconds(a.started_at, a.ended_at))
        for s in run.steps:
            if s.ended_at is not None and s.id not in seen.steps:
                seen.steps.add(s.id)
                m.step_duration.labels(s.state).observe(_seconds(s.created_at, s.ended_at))
        if run.state in TERMINAL_RUN and seen.state != run.state:
            seen.state = run.state
            m.runs_finished.labels(run.state).inc()
            return True
        seen.state = run.state
        return False


def _seconds(start: dt.datetime, end: dt.datetime) -> float:
    return max(0.0, (end - start).total_seconds())


def _before(at: dt.datetime | None, limit: dt.datetime) -> bool:
    return at is not None and at < limit
