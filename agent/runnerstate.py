"""The durable record of this agent's hosted flow runners (``agent/flowrunners.py``).

``flowrunners.json`` in the data directory holds the pid and start time of each runner process
(a restarted agent re-attaches to those still alive) and the exit reports not sent yet.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from meridian.core.durable import replace_file

STATE_FILE = "flowrunners.json"


@dataclass
class RunnerProcess:
    flow_run_id: str
    epoch: int
    pid: int
    start_time: str  # /proc/<pid>/stat starttime ("" where unknown): pid reuse is not us
    work_dir: str


@dataclass(frozen=True)
class RunnerExit:
    flow_run_id: str
    epoch: int
    exit_code: int
    message: str


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` ("" off Linux), or None when it does not exist."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat.rsplit(")", 1)[-1].split()
    if fields and fields[0] == "Z":
        return None  # a zombie has ended
    return fields[19] if len(fields) > 19 else ""


def alive(proc: RunnerProcess) -> bool:
    """Whether the recorded runner still runs (a reused pid with another start time does not)."""
    started = process_start_time(proc.pid)
    return started is not None and (not proc.start_time or started == proc.start_time)


class RunnerStateFile:
    """Loads and saves the state file; saves may overlap and the newest snapshot wins."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._write_lock = threading.Lock()
        self._snapshots = 0  # taken
        self._written = 0  # the newest one on disk

    def load(self) -> dict[str, Any]:
        """The saved state ({} when there is none or it cannot be read); blocking."""
        try:
            state = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    async def save(self, runners: Iterable[RunnerProcess], exits: Iterable[RunnerExit]) -> None:
        # The snapshot is taken on the loop (which alone changes the state) before the first
        # await; the writes run on threads, so a slower, older snapshot must not land over a
        # newer one.
        self._snapshots += 1
        seq = self._snapshots
        state = {
            "runners": [asdict(p) for p in runners],
            "exits": [asdict(e) for e in exits],
        }
        await asyncio.to_thread(self._write_snapshot, seq, json.dumps(state).encode())

    def _write_snapshot(self, seq: int, data: bytes) -> None:
        with self._write_lock:
            if seq <= self._written:
                return
            replace_file(self.path, data)
            self._written = seq
