"""Where runners hand in reports: journal first, then wake the connection to send them.

Writing to the journal before anything goes on the wire is what lets reports survive a dropped
stream or an agent restart; the event replaces any polling between a report being written and
the connection noticing it.
"""

from __future__ import annotations

import asyncio
import time

from agent import convert
from agent.journal import Journal
from agent.reports import ReportBody


class Reporter:
    """Journals report bodies for attempts and signals that there is something to send."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        self.appended = asyncio.Event()

    def report(self, attempt_id: str, fencing_token: int, body: ReportBody) -> int:
        """Durably record ``body`` for the attempt; returns the report's sequence number."""
        kind, payload = convert.encode_report(body, int(time.time() * 1000))
        seq = self._journal.append(kind, attempt_id, fencing_token, payload)
        self.appended.set()
        return seq
