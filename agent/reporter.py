"""Where runners hand in reports: bound, journal, then wake the connection to send them.

Writing to the journal before anything goes on the wire is what lets reports survive a dropped
stream or an agent restart; the event replaces any polling between a report being written and
the connection noticing it. Each report is stamped with the time it happened *before* it is
journaled, so a report replayed after an outage still carries its own time.

Every body is bounded first (``agent.bounds``) against the frame size the control plane last
negotiated, so the journal never holds an entry the control plane would refuse. The journal
write (a commit with fsync) runs in a worker thread, never on the event loop. When it fails
because the disk is full, the disk reserve is released and the write retried once.
"""

from __future__ import annotations

import asyncio
import logging
import time

from agent import convert
from agent.bounds import ReportTooLarge, bound_body, split_chunk
from agent.health import DISK_FULL, Health, fault_reason
from agent.journal import Journal
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
        self._health = health
        self.payload_limit = self.limits.payload_limit(journal.max_frame_bytes())
        self.appended = asyncio.Event()

    def negotiated(self, max_frame_bytes: int) -> None:
        """Apply a Welcome's frame size (remembered in the journal for the next start)."""
        self.payload_limit = self.limits.payload_limit(max_frame_bytes)
        self._journal.set_max_frame_bytes(max_frame_bytes)

    async def report(self, attempt_id: str, fencing_token: int, body: ReportBody) -> int:
        """Durably record ``body`` for the attempt; returns the (last) report's seq."""
        at_ms = int(time.time() * 1000)
        seq = 0
        for kind, payload in self.encode(body, at_ms):
            seq = await asyncio.to_thread(self._append, kind, attempt_id, fencing_token, payload)
        self.appended.set()
        return seq

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

    def _append(self, kind: str, attempt_id: str, fencing_token: int, payload: bytes) -> int:
        try:
            return self._journal.append(kind, attempt_id, fencing_token, payload)
        except Exception as exc:
            if fault_reason(exc) != DISK_FULL or self._health is None:
                raise
            # Free the reserve (and say we are degraded), then try once more.
            self._health.fault(DISK_FULL, f"journal write failed: {exc}")
            return self._journal.append(kind, attempt_id, fencing_token, payload)
