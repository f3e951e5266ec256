"""The shared services every servicer works with, and the run-change notifier."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field

from control_plane.auth.ca import CertificateAuthority
from control_plane.config import ServerConfig
from control_plane.scheduler.dispatcher import Dispatcher
from control_plane.scheduler.housekeeping import Housekeeping
from control_plane.scheduler.registry import AgentRegistry
from control_plane.store.db import Store
from control_plane.telemetry.frames import FrameCounter, FrameCounts
from control_plane.transfers.relay import Relay


class RunNotifier:
    """Wakes WatchRun streams when a committed change touched their run."""

    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)

    def notify(self, run_ids: set[str]) -> None:
        for run_id in run_ids:
            for event in self._waiters.get(run_id, ()):
                event.set()

    def subscribe(self, run_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self._waiters[run_id].add(event)
        return event

    def unsubscribe(self, run_id: str, event: asyncio.Event) -> None:
        waiters = self._waiters.get(run_id)
        if waiters is not None:
            waiters.discard(event)
            if not waiters:
                del self._waiters[run_id]


@dataclass
class Services:
    config: ServerConfig
    store: Store
    ca: CertificateAuthority
    registry: AgentRegistry
    dispatcher: Dispatcher
    notifier: RunNotifier
    advertised_agent_address: str = ""
    # Agent-stream frames in and out (``meridian_stream_frames_*_total`` on /metrics); the
    # web listener renders the same object.
    frames: FrameCounter = field(default_factory=FrameCounts)
    # Result-store clean-up: deletions sent to agents, sweeps for CollectResults (None: off).
    housekeeping: Housekeeping | None = None
    # Result transfers in flight: one bounded pipe each, and their limits (control_plane/
    # transfers); AgentService and ControlService relay through the same one.
    relay: Relay = field(default_factory=Relay)
