"""The dispatcher: wakes on events (new attempt, agent connected, slot freed) or on the next
stored timer, runs a scheduling pass, and pushes the resulting frames to agents.

There is no polling interval on the dispatch path: a submission wakes the loop directly. The
only periodic work is the lost-agent sweep, which runs every heartbeat interval.

Queued attempts are kept in memory (``orchestration.ready.ReadyQueue``): rebuilt from the store
at start and at every sweep, fed by committed effects. Effects arrive while a pass may be
reading the queue on the store's thread, so ``apply`` only notes the changes; the loop makes
them between passes.

``queue_and_assign`` lets a submission assign its own attempts in the transaction that queues
them when a matching agent has a free slot: the slots are reserved in the registry first (every
planner counts them as in use), and released once the effects are applied or the transaction
failed. It only does so while no pass is running (the pass reads the queue on the store's
thread) and when no due attempt in the queue could use those slots (a new submission never
overtakes work already waiting for the same agents). Approval
deadlines are stored timers too: checked when the next one falls due (learnt from the
database at every sweep, so a restart or another replica's approvals are found) and when a
new one is created here. So are schedules' fire times (decision 0019): the loop wakes at
the smallest ``next_fire_at`` of the active schedules and fires what is due, one
transaction per schedule (``usecases.schedules``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from control_plane.orchestration.matching import accepts_work, could_run
from control_plane.orchestration.planning import ReadyAttempt, plan
from control_plane.orchestration.ready import ReadyEntry, ReadyQueue
from control_plane.orchestration.values import DecisionOut, Effects
from control_plane.scheduler.registry import AgentRegistry, Reservation
from control_plane.scheduler.schedule_firing import ScheduleFiring
from control_plane.store.db import Store
from control_plane.usecases.agents import expire_agent_leases
from control_plane.usecases.approvals import expire_approvals
from control_plane.usecases.limits import LEASE, HolderLiveness, sweep_limit_leases
from control_plane.usecases.runners import RunnerEndpoint, assign_runners
from control_plane.usecases.runs import crash_runs_with_lapsed_leases
from control_plane.usecases.scheduling import (
    cached_selector,
    load_ready,
    queue_and_assign,
    scheduling_pass,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


class Dispatcher:
    def __init__(
        self,
        store: Store,
        registry: AgentRegistry,
        on_runs_touched: Callable[[set[str]], None],
        *,
        sweep_interval_s: float,
        agent_lost_after_s: float,
        runner_grace_s: float = 60.0,
    ) -> None:
        self._store = store
        self._registry = registry
        self._on_runs_touched = on_runs_touched
        self._sweep_interval_s = sweep_interval_s
        self._lost_after_s = agent_lost_after_s
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._next_timer: dt.datetime | None = None
        self._started_at = self._store.clock()
        # An agent that missed this many heartbeats gets no new work (it may be cut off).
        self._max_silence_s = 3 * sweep_interval_s
        self._runner_grace_s = runner_grace_s
        # Concurrency-limit slots outlive a few sweeps unrenewed (usecases.limits).
        self._limit_lease = max(LEASE, dt.timedelta(seconds=3 * sweep_interval_s))
        self._next_sweep = self._store.clock()
        self._next_approval: dt.datetime | None = None  # known at the first sweep
        self._next_schedule: dt.datetime | None = None  # known at the first sweep too
        self._schedules = ScheduleFiring(store, sweep_interval_s)
        self._passes = 0
        self._ready = ReadyQueue()
        # Changes to the ready queue noted by ``apply``, made by the loop between passes.
        self._queued: list[ReadyEntry] = []
        self._left: list[str] = []
        self._resync = True  # rebuild the queue from the store before the next pass
        # A pass (or the queue's rebuild) is running: it reads the queue on the store's thread.
        self._in_pass = False
        # Hosted flow runners (decision 0018): a runner pass is due when a run wants a runner,
        # a runner slot was freed or offered, at every sweep, and at the next start_after.
        self._runners_due = True
        self._next_runner_start: dt.datetime | None = None
        self._runner_endpoint = RunnerEndpoint()

    def set_runner_endpoint(self, client_address: str, ca_certificate_pem: bytes) -> None:
        """Where hosted runners reach the client listener (known once it listens)."""
        self._runner_endpoint = RunnerEndpoint(client_address, ca_certificate_pem)

    def wake_runners(self) -> None:
        """A run may now get a runner (an agent offering runner slots connected)."""
        self._runners_due = True
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="dispatcher")

    def wake(self) -> None:
        self._wake.set()

    @property
    def max_silence_s(self) -> float:
        """An agent silent for longer gets no new work until it is heard from again."""
        return self._max_silence_s

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._seconds_to_next_due()):
                    await self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return
            self._in_pass = True
            try:
                await self._pass()
            except Exception:  # a bad pass must not stop dispatching for everyone
                log.exception("scheduling pass failed; retrying shortly")
                # It may have dropped entries it did not commit: read the queue again.
                self._resync = True
                self._ready.explained.clear()
                self._ready.explained_runs.clear()
                await asyncio.sleep(0.5)
                self._wake.set()
            finally:
                self._in_pass = False

    def _seconds_to_next_due(self) -> float:
        now = self._store.clock()
        timers = (
            self._next_timer,
            self._next_approval,
            self._next_schedule,
            self._next_runner_start,
        )
        due = [self._next_sweep] + [t for t in timers if t]
        return max(0.0, min((t - now).total_seconds() for t in due))

    async def _pass(self) -> None:
        now = self._store.clock()
        if now >= self._next_sweep:
            # Due again in an interval even if this sweep fails: a sweep that keeps raising
            # must not keep every other branch of the pass from running.
            self._next_sweep = now + dt.timedelta(seconds=self._sweep_interval_s)
            self._resync = True  # another writer (replica, offline command) may have queued
            await self._sweep_leases(now)
        elif self._next_approval is not None and now >= self._next_approval:
            await self._expire_approvals(now)
        elif self._next_schedule is not None and now >= self._next_schedule:
            await self._fire_schedules(now)
        if self._runners_due or (self._next_runner_start and now >= self._next_runner_start):
            await self._assign_runners()
        if self._resync:
            self._resync = False
            self._ready.replace(await self._store.transact(load_ready, self._ready))
        self._update_ready()
        if not self._ready:
            self._next_timer = None  # nothing queued: no transaction at all
            return
        self._passes += 1
        self._next_timer = await self._store.transact(
            scheduling_pass,
            self._registry.slots(max_silence_s=self._max_silence_s),
            tiebreak=self._passes,
            ready=self._ready,
        )

    async def queue_and_assign(
        self,
        needs: Iterable[tuple[str, ...]],
        usecase: Callable[..., T],
        *args: Any,
        **kwargs: Any,
    ) -> T:
        """Run ``usecase`` (which queues attempts asking for ``needs``: (target, provider) or
        (target, provider, result store) per attempt, in queue order) in a transaction that
        also assigns them to free slots reserved for it now; what it cannot assign stays
        queued for the pass.

        The transaction runs as a task of its own, shielded from the caller's cancellation:
        once it may have committed assignments, their effects (the Assign frames) must be
        applied and the reservation released whatever happens to the request.
        """
        reservation = self._reserve(needs)
        if not reservation.slots:
            return await self._store.transact(usecase, *args, **kwargs)

        async def run() -> T:
            try:
                return await self._store.transact(
                    queue_and_assign,
                    reservation.slots,
                    usecase,
                    *args,
                    tiebreak=self._passes,
                    **kwargs,
                )
            finally:
                reservation.release()

        task = asyncio.ensure_future(run())
        # Its caller may be gone when it fails: the error is its caller's, not the loop's.
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return await asyncio.shield(task)

    def _reserve(self, needs: Iterable[tuple[str, ...]]) -> Reservation:
        """Reserve the slots a plan of ``needs`` takes, among free slots no due queued attempt
        could use (fairness: waiting work goes first, through the pass). Nothing while a pass
        runs or before the queue was read from the store."""
        if self._in_pass or self._resync or self._stopping:
            return self._registry.reserve({})
        self._update_ready()  # safe: no pass is reading the queue
        waiting = [
            (cached_selector(target), provider)
            for target, provider in self._ready.due_needs(self._store.clock())
        ]
        free = [
            slot
            for slot in self._registry.slots(max_silence_s=self._max_silence_s)
            if accepts_work(slot) and not any(could_run(s, p, slot) for s, p in waiting)
        ]
        if not free:
            return self._registry.reserve({})
        wanted = (
            ReadyAttempt(str(i), cached_selector(need[0]), need[1], result_store=_store(need))
            for i, need in enumerate(needs)
        )
        counts: dict[str, int] = {}
        for assignment in plan(wanted, free, tiebreak=self._passes):
            counts[assignment.agent_id] = counts.get(assignment.agent_id, 0) + 1
        return self._registry.reserve(counts)

    def _update_ready(self) -> None:
        queued, self._queued = self._queued, []
        left, self._left = self._left, []
        self._ready.add(queued)
        self._ready.discard(left)

    @property
    def in_pass(self) -> bool:
        """Whether a pass (or the queue's rebuild) is running now."""
        return self._in_pass

    @property
    def queue_loaded(self) -> bool:
        """Whether the ready queue was read from the store (before that nothing reserves)."""
        return not self._resync

    @property
    def ready(self) -> ReadyQueue:
        """The queued attempts as the scheduler knows them (read between passes)."""
        return self._ready

    async def _sweep_leases(self, now: dt.datetime) -> None:
        """Stored leases, checked every sweep interval: agents' attempts, runners' runs."""
        await self._store.transact(
            expire_agent_leases,
            self._lost_after_s,
            self._started_at,
            self._registry.live_agents(now),
        )
        await self._store.transact(
            crash_runs_with_lapsed_leases, self._started_at, self._runner_grace_s
        )
        await self._store.transact(sweep_limit_leases, self._limit_liveness(now), self._limit_lease)
        await self._expire_approvals(now)
        await self._fire_schedules(now)
        self._runners_due = True  # lost runners' runs may want a new one

    def _limit_liveness(self, now: dt.datetime) -> HolderLiveness:
        """When agents were last heard from: limit slots of their attempts are renewed."""
        heard = {agent_id: a.last_seen for agent_id, a in self._registry.live_agents(now).items()}
        return HolderLiveness(self._started_at, heard, self._lost_after_s)

    async def _assign_runners(self) -> None:
        """Hand runs that want a hosted runner to free runner slots (decision 0018)."""
        self._runners_due = False
        self._next_runner_start = None
        try:
            self._next_runner_start = await self._store.transact(
                assign_runners,
                self._registry.runner_hosts(max_silence_s=self._max_silence_s),
                self._runner_endpoint,
            )
        except Exception:  # never stops the pass that assigns steps
            log.exception("assigning hosted runners failed; retrying at the next sweep")

    async def _fire_schedules(self, now: dt.datetime) -> None:
        """Fire the due slots of schedules (decision 0019), then learn the next fire time.

        A schedule whose evaluation fails is held back for a while and the others go on
        (``ScheduleFiring``); a failure of the store itself is logged and retried at the next
        sweep. Neither stops the pass that assigns work."""
        try:
            self._next_schedule = await self._schedules.fire_due(now)
        except Exception:
            log.exception("evaluating schedules failed; retrying at the next sweep")
            self._next_schedule = now + dt.timedelta(seconds=self._sweep_interval_s)

    async def _expire_approvals(self, now: dt.datetime) -> None:
        found = await self._store.transact(expire_approvals)
        # A deadline created while this ran may be missing from ``found``: keep a known
        # future one (at worst it wakes a pass that finds nothing due).
        known = self._next_approval if self._next_approval and self._next_approval > now else None
        self._next_approval = min((t for t in (found, known) if t), default=None)

    def apply(self, effects: Effects) -> None:
        """Carry out what a committed transaction decided: send frames, wake watchers."""
        self._queued.extend(effects.queued)
        for assign in effects.assigns:
            self._left.append(assign.attempt_id)
            session = self._registry.get(assign.agent_id)
            if session is None:
                continue  # re-sent when the agent reconnects (its attempt stays ASSIGNED)
            session.in_use += 1
            session.send(assign)
        for cancel in effects.cancels:
            session = self._registry.get(cancel.agent_id)
            if session is not None:
                session.send(cancel)
        by_agent: dict[str, list[DecisionOut]] = {}
        for decision in effects.decisions:
            by_agent.setdefault(decision.agent_id, []).append(decision)
        for agent_id, decisions in by_agent.items():
            session = self._registry.get(agent_id)
            if session is not None:
                session.send(decisions)
        for agent_id, count in effects.released_slots.items():
            session = self._registry.get(agent_id)
            if session is not None:
                session.in_use = max(0, session.in_use - count)
        if effects.timers:
            due = min(effects.timers)
            # A stored timer may be a schedule's next fire time (a deployment was created).
            if self._next_schedule is None or due < self._next_schedule:
                self._next_schedule = due
            if self._next_approval is None or due < self._next_approval:
                self._next_approval = due
                self._wake.set()
        for frame in effects.runner_frames:
            session = self._registry.get(frame.agent_id)
            if session is not None:
                session.send(frame)  # unreachable: its lease lapses, or it is fenced anyway
        if effects.runners_wanted:
            self._runners_due = True
            self.wake()
        if effects.touched_runs:
            self._on_runs_touched(effects.touched_runs)
        if effects.wake_scheduler:
            self.wake()


def _store(need: tuple[str, ...]) -> str:
    """The result store a need names (its third item; none when it has two)."""
    return need[2] if len(need) > 2 else ""
