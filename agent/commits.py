"""Group commit for the agent's journal: many writers, one transaction and one fsync per batch.

Runners, the connection (acks) and the worker hand in journal ops (``agent.journal``: reports,
handle saves and removals, acks) and await them. One writer task takes *everything* pending,
writes it with ``Journal.write_batch`` in a worker thread (never on the event loop) and then
resolves every waiter; ops handed in while that write is in flight form the next batch. So a
waiter is resumed only once its ops are durable, exactly as with one commit per report, but N
concurrent reports cost about one fsync per batch instead of N.

Ops are written in the order they were handed in (FIFO across batches), so the reports of one
attempt keep their order even when its runner was cancelled while waiting. A write that fails
because the disk is full releases the disk reserve (``agent.health``: the agent is degraded)
and is retried once; any other failure is raised to every waiter of that batch, whose ops were
not written (the transaction rolled back).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from agent.health import DISK_FULL, Health, fault_reason
from agent.journal import Journal, JournalEntry, JournalOp

log = logging.getLogger("meridian.agent.commits")

# Ops per transaction at most: a huge backlog is written in several bounded transactions.
MAX_BATCH_OPS = 2000

Waiter = tuple[list[JournalOp], "asyncio.Future[list[JournalEntry | None]]"]


class GroupCommitter:
    """Writes journal ops in batches; ``submit`` returns once its ops are durable."""

    def __init__(
        self,
        journal: Journal,
        health: Health | None = None,
        *,
        on_commit: Callable[[list[JournalEntry]], None] | None = None,
        max_batch_ops: int = MAX_BATCH_OPS,
    ) -> None:
        self._journal = journal
        self._health = health
        self._on_commit = on_commit
        self._max_batch_ops = max(1, max_batch_ops)
        self._pending: list[Waiter] = []
        self._in_flight = False
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batches = 0  # transactions written so far (for metrics and tests)

    async def submit(self, ops: Sequence[JournalOp]) -> list[JournalEntry | None]:
        """Write ``ops`` with the next batch; per op, its journaled entry (appends) or None."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[JournalEntry | None]] = loop.create_future()
        # Its error reaches the waiter; a waiter that was cancelled meanwhile must not leave
        # it "never retrieved".
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._pending.append((list(ops), future))
        self._ensure_writer(loop)
        assert self._wake is not None
        self._wake.set()
        # Shielded: a waiter that is cancelled does not take its ops out of the batch (they
        # are written in order anyway), it only stops waiting for them.
        return await asyncio.shield(future)

    async def close(self) -> None:
        """Write what is pending, then stop the writer task."""
        task = self._task
        if task is None or task.done():
            return
        while (self._pending or self._in_flight) and not task.done():
            await asyncio.sleep(0.01)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def _ensure_writer(self, loop: asyncio.AbstractEventLoop) -> None:
        # One writer per event loop (tests may drive a reporter from more than one loop).
        if self._task is not None and not self._task.done() and self._loop is loop:
            return
        self._loop = loop
        self._wake = asyncio.Event()
        self._task = loop.create_task(self._write_forever(self._wake))

    async def _write_forever(self, wake: asyncio.Event) -> None:
        while True:
            await wake.wait()
            wake.clear()
            while self._pending:
                await self._write_one_batch()

    async def _write_one_batch(self) -> None:
        batch: list[Waiter] = []
        count = 0
        while self._pending and (
            not batch or count + len(self._pending[0][0]) <= self._max_batch_ops
        ):
            waiter = self._pending.pop(0)
            batch.append(waiter)
            count += len(waiter[0])
        ops = [op for waiter_ops, _ in batch for op in waiter_ops]
        self._in_flight = True
        try:
            results = await asyncio.to_thread(self._write, ops)
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        finally:
            self._in_flight = False
        self.batches += 1
        start = 0
        for waiter_ops, future in batch:
            if not future.done():
                future.set_result(results[start : start + len(waiter_ops)])
            start += len(waiter_ops)
        if self._on_commit is not None:
            appended = [entry for entry in results if entry is not None]
            if appended:
                try:
                    self._on_commit(appended)
                except Exception:
                    # A listener's bug must not stop the writer every runner depends on.
                    log.exception("journal commit listener failed")

    def _write(self, ops: list[JournalOp]) -> list[JournalEntry | None]:
        try:
            return self._journal.write_batch(ops)
        except Exception as exc:
            if fault_reason(exc) != DISK_FULL or self._health is None:
                raise
            # Free the reserve (and say we are degraded), then try once more.
            self._health.fault(DISK_FULL, f"journal write failed: {exc}")
            return self._journal.write_batch(ops)
