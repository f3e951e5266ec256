"""One rule for what state an agent is in, shared by the web console and the metrics.

Stored status alone lags: a frozen agent (SIGSTOP, a black-holed network) keeps its stream
open and stays ``connected`` in the table until the lease sweep marks it lost. The live
session knows better: an agent silent for longer than the dispatcher tolerates gets no new
work, and is shown as ``stale``.
"""

from __future__ import annotations

import datetime as dt
from typing import Protocol

STATUSES = ("connected", "stale", "draining", "disconnected", "lost", "revoked")


class LiveSession(Protocol):
    draining: bool

    def silent_for(self) -> float: ...


def agent_status(
    stored: str,
    revoked_at: dt.datetime | None,
    drain_requested_at: dt.datetime | None,
    live: LiveSession | None,
    max_silence_s: float,
) -> str:
    """connected · stale · draining · disconnected · lost · revoked."""
    if revoked_at is not None:
        return "revoked"
    if drain_requested_at is not None:
        return "draining"  # an operator's drain holds until the agent is re-enrolled
    if live is not None:
        if live.silent_for() > max_silence_s:
            return "stale"
        return "draining" if live.draining else "connected"
    if stored in ("connected", "draining"):
        return "disconnected"
    return stored if stored in STATUSES else "disconnected"
