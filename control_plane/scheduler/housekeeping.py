"""Housekeeping of the sites' result stores, driven from here and done by the agents.

Three jobs, one loop (docs/results.md, "Clean-up"):

* **Deletions.** Every few seconds, for each environment with rows in ``result_deletions``,
  each connected agent of it that advertises the rows' stores is sent one ``DeleteResults``
  (at most ``MAX_DELETE_BATCH`` objects, within the frame limit); its ``ResultsDeleted``
  answer removes the confirmed rows. One request per agent is in flight at a time. Rows are
  durable and marked when sent, so a request lost with a stream or a restart is sent again
  after ``resend_after_s``; ``usecases.cleanup`` gives a row up after a few tries.
* **Retention.** With ``run_retention_days`` set, finished runs older than that are deleted
  like ``DeleteRun``, a bounded batch at a time.
* **Garbage collection** (``collect``, for ``CollectResults``): one agent per environment
  lists its stores (``SweepResults`` -> ``ResultListing`` pages); objects no step run refers
  to, whose run has no live attempt, are orphans, deleted unless it is a dry run. One sweep
  per agent at a time, bounded in time by the caller and in memory by
  ``MAX_ORPHANS_PER_SWEEP``.

Frames arrive through the agent stream's read loop (``api/agent_service.py``), which calls
``on_listing``/``on_results_deleted`` and, when a stream ends, ``agent_gone``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from control_plane.orchestration.housekeeping import (
    MAX_DELETE_BATCH,
    MAX_ORPHANS_PER_SWEEP,
    DeleteResultsOut,
    ResultListingIn,
    ResultsDeletedIn,
    StoredObjectValue,
    StoreTally,
    SweepResultsOut,
    delete_batches,
    failed_uris,
    is_orphan,
    listing_problem,
    store_errors,
)
from control_plane.scheduler.registry import AgentRegistry, AgentSession
from control_plane.store.db import Store
from control_plane.usecases.cleanup import (
    PendingDeletion,
    claim_deletions,
    environments_with_deletions,
    expire_runs,
    known_environments,
    live_runs,
    record_collection,
    referenced_by_live_parameters,
    referenced_page,
    settle_deletions,
)

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 5.0
DEFAULT_RESEND_AFTER_S = 60.0
# Retention is checked this often and deletes at most EXPIRE_PER_CHECK runs, one per
# transaction (a run of 10,000 steps is a large delete: others commit in between); a backlog
# drains over the next checks.
EXPIRE_EVERY_S = 60.0
EXPIRE_PER_CHECK = 20
# An agent has a few stores (its config allows 32): more in one sweep is refused.
MAX_STORES_PER_SWEEP = 64
# A DeleteResults frame stays well under the stream's frame limit.
MAX_DELETE_FRAME_BYTES = 1024 * 1024


@dataclass(frozen=True)
class CollectReport:
    tallies: list[StoreTally]
    skipped: list[str]


@dataclass
class _QueueRequest:
    """A DeleteResults sent for queued rows: which row each URI is."""

    agent_id: str
    rows: dict[str, int]
    sent_at: float


@dataclass
class _Sweep:
    sweep_id: str
    agent_id: str
    environment: str
    live_runs: set[str]
    referenced: set[int]
    # Which stores of the listing this sweep judges, when several agents of the environment
    # are swept (``covering_sweeps``); the default judges every store the agent lists.
    part: SweepPart = field(default_factory=lambda: SweepPart())
    tallies: dict[str, StoreTally] = field(default_factory=dict)
    orphans: list[StoredObjectValue] = field(default_factory=list)
    overflow: bool = False
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    def tally(self, store: str) -> StoreTally:
        found = self.tallies.get(store)
        if found is None:
            found = self.tallies[store] = StoreTally(self.environment, store)
        return found

    def add(self, page: ResultListingIn) -> None:
        stores = {obj.store for obj in page.objects} | set(self.tallies)
        if len(stores) > MAX_STORES_PER_SWEEP:
            self.fail(f"the agent listed more than {MAX_STORES_PER_SWEEP} stores")
            return
        for obj in page.objects:
            if not self.part.judges(obj.store):
                continue  # swept through another agent of the environment
            tally = self.tally(obj.store)
            tally.objects += 1
            if not is_orphan(obj, self.referenced, self.live_runs):
                continue
            tally.orphans += 1
            tally.orphan_bytes += obj.size
            if len(self.orphans) < MAX_ORPHANS_PER_SWEEP:
                self.orphans.append(obj)
            else:
                self.overflow = True
        for store, why in store_errors(page.error).items():
            self.tally(store).error(f"listing failed: {why}")
        if page.done:
            self.finished.set()

    def fail(self, why: str) -> None:
        self.tally("").error(why)
        self.finished.set()


class Housekeeping:
    """The loop that sends deletions and expires runs, and the garbage collector's sweeps."""

    def __init__(
        self,
        store: Store,
        registry: AgentRegistry,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        resend_after_s: float = DEFAULT_RESEND_AFTER_S,
        run_retention_days: float = 0.0,
        max_frame_bytes: int = 4 * 1024 * 1024,
        max_silence_s: float = float("inf"),
    ) -> None:
        self._store = store
        self._registry = registry
        self._interval_s = interval_s
        self._resend_after_s = resend_after_s
        self._retention_days = run_retention_days
        self._frame_bytes = max(4096, min(MAX_DELETE_FRAME_BYTES, max_frame_bytes // 2))
        self._max_silence_s = max_silence_s
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._next_expiry = 0.0
        self._queued: dict[str, _QueueRequest] = {}  # request id -> queued rows in flight
        self._waiters: dict[str, tuple[str, asyncio.Future[ResultsDeletedIn]]] = {}
        self._sweeps: dict[str, _Sweep] = {}  # sweep id -> sweep in flight
        self._sweeping: set[str] = set()  # agents with a sweep in flight

    # ---- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="housekeeping")

    def wake(self) -> None:
        """Send queued deletions now rather than at the next tick (a run was just deleted)."""
        self._wake.set()

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        for sweep in self._sweeps.values():
            sweep.fail("the control plane is shutting down")

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval_s):
                    await self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return
            try:
                if self._retention_days > 0 and loop.time() >= self._next_expiry:
                    self._next_expiry = loop.time() + EXPIRE_EVERY_S
                    await self._expire()
                await self._send_deletions()
            except Exception:  # one bad tick must not stop clean-up for good
                log.exception("result housekeeping failed; trying again at the next tick")

    # ---- retention ----------------------------------------------------------------------

    async def _expire(self) -> None:
        for _ in range(EXPIRE_PER_CHECK):
            expired = await self._store.transact(expire_runs, self._retention_days, 1)
            if not expired:
                return
            run = expired[0]
            log.info(
                "run %s expired (retention %g days): %d stored objects queued for deletion",
                run.flow_run_id,
                self._retention_days,
                run.queued,
            )

    # ---- the deletion queue -------------------------------------------------------------

    async def _send_deletions(self) -> None:
        now = asyncio.get_running_loop().time()
        for request_id, request in list(self._queued.items()):
            if now - request.sent_at > self._resend_after_s:
                del self._queued[request_id]  # never answered: its rows are sent again
        busy = {r.agent_id for r in self._queued.values()}
        environments = await self._store.run(environments_with_deletions)
        for environment in environments:
            for session in self._sessions(environment):
                agent_id = session.agent.agent_id
                stores = advertised_stores(session)
                if agent_id in busy or not stores:
                    continue
                claimed = await self._store.transact(
                    claim_deletions,
                    environment,
                    stores,
                    limit=MAX_DELETE_BATCH,
                    resend_after_s=self._resend_after_s,
                )
                if claimed:
                    self._send_queued(session, claimed)
                    busy.add(agent_id)

    def _send_queued(self, session: AgentSession, claimed: Sequence[PendingDeletion]) -> None:
        rows = {c.uri: c.id for c in claimed}
        objects = (StoredObjectValue(c.store, c.uri, c.size) for c in claimed)
        now = asyncio.get_running_loop().time()
        for batch in delete_batches(objects, max_bytes=self._frame_bytes):
            request_id = str(uuid.uuid4())
            self._queued[request_id] = _QueueRequest(
                session.agent.agent_id, {o.uri: rows[o.uri] for o in batch}, now
            )
            session.send(DeleteResultsOut(request_id, batch))

    async def on_results_deleted(self, agent_id: str, answer: ResultsDeletedIn) -> None:
        """An agent's answer to DeleteResults (queued rows, or a sweep's orphans)."""
        waiter = self._waiters.get(answer.request_id)
        if waiter is not None and waiter[0] == agent_id:
            del self._waiters[answer.request_id]
            if not waiter[1].done():
                waiter[1].set_result(answer)
            return
        request = self._queued.get(answer.request_id)
        if request is None or request.agent_id != agent_id:
            return  # answered after its resend delay, or not ours: the rows are resent
        del self._queued[answer.request_id]
        failed = failed_uris(answer.errors)
        done = [row for uri, row in request.rows.items() if uri not in failed]
        problems = {row: failed[uri] for uri, row in request.rows.items() if uri in failed}
        if answer.count < len(done):
            # The answer does not account for every object: keep them all for another try.
            why = f"the agent confirmed {answer.count} of {len(done)} deletions"
            problems.update((row, why) for row in done)
            done = []
        await self._store.transact(settle_deletions, done, problems)
        if done:
            self._wake.set()  # more may be waiting for this agent

    # ---- garbage collection -------------------------------------------------------------

    async def collect(
        self,
        *,
        environment: str,
        older_than_s: float,
        dry_run: bool,
        scope: Sequence[str],
        budget_s: float,
    ) -> CollectReport:
        """Sweep each environment (``environment``, or every one ``scope`` allows; empty = all)
        through the agents that together have all its advertised stores
        (``covering_sweeps``), find orphans and delete them unless ``dry_run``, within
        ``budget_s``."""
        deadline = asyncio.get_running_loop().time() + budget_s
        known = set(await self._store.run(known_environments))
        connected: dict[str, list[AgentSession]] = {}
        for session in self._sessions():
            connected.setdefault(session.agent.environment, []).append(session)
        targets = [environment] if environment else sorted(known | set(connected))
        if scope:
            targets = [e for e in targets if e in scope]
        skipped: list[str] = []
        chosen: dict[str, list[tuple[AgentSession, SweepPart]]] = {}
        for env in targets:
            free = [s for s in connected.get(env, []) if s.agent.agent_id not in self._sweeping]
            if free:
                chosen[env] = covering_sweeps(free)
                missed = sorted(
                    set().union(*(advertised_stores(s) for s in connected.get(env, [])))
                    - set().union(*(advertised_stores(s) for s, _ in chosen[env]))
                )
                if missed:
                    skipped.append(
                        f"{env}: stores {', '.join(missed)}: their agents are sweeping already; "
                        "try again later"
                    )
            elif env in connected:
                skipped.append(f"{env}: a sweep already runs on its agents; try again later")
            else:
                skipped.append(f"{env}: no agent of this environment is connected")
        tallies: list[StoreTally] = []
        sweeps = [pair for pairs in chosen.values() for pair in pairs]
        if sweeps:
            for session, _ in sweeps:
                self._sweeping.add(session.agent.agent_id)
            try:
                # Live runs first: an attempt ending after this read has recorded its
                # reference by the time the references are read.
                live = await self._store.run(live_runs)
                referenced = await self._referenced(set(chosen))
                swept = await asyncio.gather(
                    *(
                        self._sweep(s, part, older_than_s, dry_run, live, referenced, deadline)
                        for s, part in sweeps
                    )
                )
            finally:
                for session, _ in sweeps:
                    self._sweeping.discard(session.agent.agent_id)
            tallies = [t for found in swept for t in found]
        await self._store.transact(
            record_collection,
            dry_run=dry_run,
            environment=environment,
            older_than_s=older_than_s,
            tallies=tallies,
            skipped=skipped,
        )
        return CollectReport(tallies, skipped)

    async def _referenced(self, environments: set[str]) -> set[int]:
        """Digests of every URI of ``environments`` a step run refers to, read a page per
        store call so the store's thread is never held for the whole table."""
        referenced: set[int] = await self._store.run(referenced_by_live_parameters, environments)
        after = ""
        while True:
            digests, after = await self._store.run(referenced_page, after, environments)
            referenced |= digests
            if not after:
                return referenced

    async def _sweep(
        self,
        session: AgentSession,
        part: SweepPart,
        older_than_s: float,
        dry_run: bool,
        live: set[str],
        referenced: set[int],
        deadline: float,
    ) -> list[StoreTally]:
        agent = session.agent
        sweep = _Sweep(str(uuid.uuid4()), agent.agent_id, agent.environment, live, referenced, part)
        self._sweeps[sweep.sweep_id] = sweep
        try:
            session.send(SweepResultsOut(sweep.sweep_id, older_than_s))
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                async with asyncio.timeout(max(0.0, remaining)):
                    await sweep.finished.wait()
            except TimeoutError:
                sweep.fail(
                    f"agent {agent.name} did not finish listing in time; the objects listed "
                    "so far were checked"
                )
        finally:
            del self._sweeps[sweep.sweep_id]
        if sweep.overflow:
            sweep.tally("").error(
                f"more than {MAX_ORPHANS_PER_SWEEP} orphans: run the collection again for the rest"
            )
        if not dry_run and sweep.orphans:
            await self._delete_orphans(session, sweep, deadline)
        return [t for _, t in sorted(sweep.tallies.items())]

    async def _delete_orphans(self, session: AgentSession, sweep: _Sweep, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        for batch in delete_batches(sweep.orphans, max_bytes=self._frame_bytes):
            request_id = str(uuid.uuid4())
            waiter: asyncio.Future[ResultsDeletedIn] = loop.create_future()
            self._waiters[request_id] = (sweep.agent_id, waiter)
            session.send(DeleteResultsOut(request_id, batch))
            try:
                async with asyncio.timeout(max(0.0, deadline - loop.time())):
                    answer = await waiter
            except (TimeoutError, ConnectionError) as exc:
                why = "no answer in time" if isinstance(exc, TimeoutError) else str(exc)
                sweep.tally("").error(f"deleting orphans stopped: {why}")
                return
            finally:
                self._waiters.pop(request_id, None)
            failed = failed_uris(answer.errors)
            for obj in batch:
                if obj.uri in failed:
                    sweep.tally(obj.store).error(f"{obj.uri}: {failed[obj.uri]}")
                else:
                    sweep.tally(obj.store).deleted += 1

    # ---- the agent stream ---------------------------------------------------------------

    def on_listing(self, agent_id: str, page: ResultListingIn) -> None:
        """A page of a sweep's listing; pages of sweeps no longer waited for are dropped."""
        sweep = self._sweeps.get(page.sweep_id)
        if sweep is None or sweep.agent_id != agent_id or sweep.finished.is_set():
            return
        problem = listing_problem(page)
        if problem is not None:
            sweep.fail(f"the agent's listing was refused: {problem}")
            return
        sweep.add(page)

    def agent_gone(self, agent_id: str) -> None:
        """The agent's stream ended: what it was asked will not be answered on it."""
        for sweep in self._sweeps.values():
            if sweep.agent_id == agent_id and not sweep.finished.is_set():
                sweep.fail("the agent disconnected during the listing")
        for owner, waiter in self._waiters.values():
            if owner == agent_id and not waiter.done():
                waiter.set_exception(ConnectionError("the agent disconnected"))
        for request_id, request in list(self._queued.items()):
            if request.agent_id == agent_id:
                del self._queued[request_id]  # its rows are sent again after the delay

    def _sessions(self, environment: str | None = None) -> list[AgentSession]:
        return [
            s
            for s in self._registry.sessions()
            if (environment is None or s.agent.environment == environment)
            and s.silent_for() <= self._max_silence_s
        ]


def advertised_stores(session: AgentSession) -> frozenset[str]:
    """The result stores the agent said it has (its Hello)."""
    return frozenset(session.result_stores)


@dataclass(frozen=True)
class SweepPart:
    """The stores one agent's sweep judges: ``only`` those (None: every store it lists) but
    never ``others``, which other agents' sweeps of the environment judge."""

    only: frozenset[str] | None = None
    others: frozenset[str] = frozenset()

    def judges(self, store: str) -> bool:
        return (self.only is None or store in self.only) and store not in self.others


def covering_sweeps(free: Sequence[AgentSession]) -> list[tuple[AgentSession, SweepPart]]:
    """The agents of one environment to sweep through, so every store one of them advertises
    is swept once: the agent with the most stores judges everything it lists except the
    stores only others have, which agents that have them judge (one agent per store)."""
    ordered = sorted(free, key=lambda s: (-len(advertised_stores(s)), s.agent.agent_id))
    first, covered = ordered[0], set(advertised_stores(ordered[0]))
    extra: list[tuple[AgentSession, frozenset[str]]] = []
    for session in ordered[1:]:
        new = advertised_stores(session) - covered
        if new:
            extra.append((session, frozenset(new)))
            covered |= new
    others = frozenset().union(*(stores for _, stores in extra))
    return [(first, SweepPart(others=others))] + [(s, SweepPart(only=new)) for s, new in extra]
