"""Counts of the agent-stream frames a control plane receives and sends, by frame kind (the
``AgentFrame`` / ``ControlFrame`` oneof: a small closed set, so the labels stay bounded).

The API layer holds a ``FrameCounter`` (``Services.frames``) and calls ``received(kind)`` /
``sent(kind)`` once per frame in ``AgentService``'s read and write loops: a dict increment on
the event loop, nothing else. ``/metrics`` renders the same counts as
``meridian_stream_frames_received_total`` / ``meridian_stream_frames_sent_total``. The server
makes one ``FrameCounts`` per control plane and hands it to both sides.
"""

from __future__ import annotations

from collections import Counter
from typing import Protocol

MAX_KIND_CHARS = 64


class FrameCounter(Protocol):
    def received(self, kind: str) -> None: ...

    def sent(self, kind: str) -> None: ...


class FrameCounts:
    """Monotonic counts per frame kind; called on the control plane's event loop only."""

    def __init__(self) -> None:
        self.received_by_kind: Counter[str] = Counter()
        self.sent_by_kind: Counter[str] = Counter()

    def received(self, kind: str) -> None:
        self.received_by_kind[(kind or "empty")[:MAX_KIND_CHARS]] += 1

    def sent(self, kind: str) -> None:
        self.sent_by_kind[(kind or "empty")[:MAX_KIND_CHARS]] += 1
