"""Where runners hand in reports: bound, journal, then wake the connection to send them.

Writing to the journal before anything goes on the wire is what lets reports survive a dropped
stream or an agent restart; the event replaces any polling between a report being written and
the connection noticing it. Each report is stamped with the time it happened *before* it is
journaled, so a report replayed after an outage still carries its own time.

Every body is bounded first (``agent.bounds``) against the frame size the control plane last
negotiated, so the journal never holds an entry the control plane would refuse. Journal writes
go through the group committer (``agent.commits``): off the event loop, one fsync per batch of
whatever every runner handed in meanwhile, and a waiter resumes only once its report is durable.
A report can carry a handle change in the same transaction (the handle with the report that
announces it, the handle's removal with the outcome). When a write fails because the disk is
full, the disk reserve is released and the write retried once.
"""

from __future__ import annotations

import asyncio
import logging
import time

from agent import convert
from agent.bounds import ReportTooLarge, bound_body, inline_result_limit, split_chunk
from agent.commits import GroupCommitter
from agent.handles import StoredHandle
from agent.health import Health
from agent.journal import Ack, Append, Journal, JournalEntry, JournalOp, RemoveHandle, SaveHandle
from agent.limits import AgentLimits
from agent.reports import LogChunk, ReportBody

log = logging.getLogger("meridian.agent.reporter")


class Reporter:
    """Journals report bodies for attempts and signals that there is something to send."""

    def __init__(
        self, journal: Journal, limits: AgentLimits | None = None, health: Health | None = None
    ) -> None:
        self._journal = journal
        self.limits = limits or AgentLimits()
        self.payload_limit = self.limits.payload_limit(journal.max_frame_bytes())
        self.appended = asyncio.Event()
        self.committer = GroupCommitter(journal, health, on_commit=self._committed)

    @property
    def inline_result_limit(self) -> int:
        """The largest result this agent sends inline now (limits and negotiated frame)."""
        return inline_result_limit(self.limits, self.payload_limit)

    def negotiated(self, max_frame_bytes: int) -> None:
        """Apply a Welcome's frame size (remembered in the journal for the next start)."""
        self.payload_limit = self.limits.payload_limit(max_frame_bytes)
        self._journal.set_max_frame_bytes(max_frame_bytes)

    async def report(
        self,
        attempt_id: str,
        fencing_token: int,
        body: ReportBody,
        *,
        save_handle: StoredHandle | None = None,
        remove_handle: bool = False,
    ) -> int:
        """Durably record ``body`` for the attempt; returns the (last) report's seq.

        ``save_handle`` is stored and ``remove_handle`` drops the attempt's handle in the same
        transaction as the report, so neither is ever durable without the other.
        """
        at_ms = int(time.time() * 1000)
        ops: list[JournalOp] = [
            Append(kind, attempt_id, fencing_token, payload)
            for kind, payload in self.encode(body, at_ms)
        ]
        if save_handle is not None:
            ops.insert(0, SaveHandle(save_handle))
        if remove_handle:
            ops.append(RemoveHandle(attempt_id))
        entries = await self.committer.submit(ops)
        return max((e.seq for e in entries if e is not None), default=0)

    async def remove_handle(self, attempt_id: str) -> None:
        """Forget the attempt's persisted handle (durably, with the next batch)."""
        await self.committer.submit([RemoveHandle(attempt_id)])

    async def ack(self, up_to_seq: int) -> None:
        """Delete acked reports with the next batch (acks alone do not wait for an fsync)."""
        await self.committer.submit([Ack(up_to_seq)])

    async def close(self) -> None:
        """Write whatever is still pending and stop the writer."""
        await self.committer.close()

    def _committed(self, entries: list[JournalEntry]) -> None:
        # One wake-up per batch: the connection sends everything committed so far together.
        self.appended.set()

    def encode(self, body: ReportBody, at_ms: int) -> list[tuple[str, bytes]]:
        """(kind, payload) pairs of ``body``, each within the payload limit."""
        body = bound_body(body, self.limits, self.payload_limit)
        kind, payload = convert.encode_report(body, at_ms)
        if len(payload) <= self.payload_limit:
            return [(kind, payload)]
        if isinstance(body, LogChunk):
            return [pair for half in split_chunk(body) for pair in self.encode(half, at_ms)]
        raise ReportTooLarge(
            f"a {kind} report of {len(payload)} bytes is over the frame limit of "
            f"{self.payload_limit} bytes"
        )
