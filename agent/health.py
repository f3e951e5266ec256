"""The agent's own health: degraded states, the disk reserve and the event-loop watchdog.

A local fault (a full disk, an unwritable work directory) fails the attempt that hit it and
makes the agent *degraded*: it says so in every Hello and Heartbeat (``degraded`` reason), the
control plane gives it no new work, and a probe checks every ``health_probe_s`` whether the
fault cleared; when it has, the agent clears the reason by itself.

The disk reserve is a file of ``disk_reserve_bytes`` in the data dir. When a write fails because
the disk is full, the reserve is released so the journal can still record *why* attempts
failed; it is taken again once the disk has room.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

from agent.limits import AgentLimits

log = logging.getLogger("meridian.agent.health")

RESERVE_FILE = "disk.reserve"
DISK_FULL = "disk_full"
WORK_DIR_UNWRITABLE = "work_dir_unwritable"
_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_UNWRITABLE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS}


def fault_reason(exc: BaseException) -> str | None:
    """The degraded reason a local error means, or None when it is not a local fault."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _DISK_FULL_ERRNOS:
            return DISK_FULL
        if isinstance(current, OSError) and current.errno in _UNWRITABLE_ERRNOS:
            return WORK_DIR_UNWRITABLE
        if isinstance(current, sqlite3.OperationalError) and "disk is full" in str(current):
            return DISK_FULL
        current = current.__cause__ or current.__context__
    return None


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class Health:
    """Whether this agent may take new work, and why not."""

    def __init__(self, data_dir: Path, work_root: Path, limits: AgentLimits) -> None:
        self._data_dir = Path(data_dir)
        self._work_root = Path(work_root)
        self._limits = limits
        self.degraded = ""
        self._on_change: Callable[[], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` on the running loop whenever the degraded reason changes (the
        change may be noticed in a worker thread)."""
        self._loop = asyncio.get_running_loop()
        self._on_change = callback

    def _changed(self) -> None:
        if self._on_change is not None and self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self._loop.call_soon_threadsafe(self._on_change)

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    # ---- the reserve ------------------------------------------------------------------------

    @property
    def _reserve(self) -> Path:
        return self._data_dir / RESERVE_FILE

    def take_reserve(self) -> bool:
        """(Re)create the reserve file; False when there is no room for it now."""
        size = self._limits.disk_reserve_bytes
        with contextlib.suppress(OSError):
            if self._reserve.stat().st_size >= size:
                return True
        try:
            self._data_dir.mkdir(parents=True, exist_ok=True)
            with open(self._reserve, "wb") as fh:
                chunk = b"\0" * min(size, 1024 * 1024)
                written = 0
                while written < size:
                    written += fh.write(chunk[: size - written])
                fh.flush()
                os.fsync(fh.fileno())
            return True
        except OSError:
            with contextlib.suppress(OSError):
                self._reserve.unlink()
            return False

    def release_reserve(self) -> bool:
        """Free the reserve so the journal can write; True when there was one to free."""
        try:
            self._reserve.unlink()
            return True
        except OSError:
            return False

    # ---- degraded ---------------------------------------------------------------------------

    def fault(self, reason: str, detail: str = "") -> None:
        """A local fault was hit: take no new work until ``probe`` sees it cleared."""
        if reason == DISK_FULL:
            self.release_reserve()
        if self.degraded != reason:
            log.error(
                "agent degraded (%s): %s; it takes no new work until this clears",
                reason,
                detail or reason,
            )
            self.degraded = reason
            self._changed()

    def disk_full_now(self) -> bool:
        try:
            return free_bytes(self._data_dir) < self._limits.min_free_bytes
        except OSError:
            return False

    def probe(self) -> str:
        """Check the current fault; returns the reason still standing ("" when healthy)."""
        if not self.degraded:
            if self.disk_full_now():
                self.fault(DISK_FULL, f"less than {self._limits.min_free_bytes} bytes free")
            return self.degraded
        if self.degraded == DISK_FULL:
            # Hysteresis: clear only with room for the reserve and twice the minimum.
            need = 2 * self._limits.min_free_bytes + self._limits.disk_reserve_bytes
            try:
                room = free_bytes(self._data_dir) >= need
            except OSError:
                room = False
            if not room or not self.take_reserve() or not self._work_dir_writable():
                return self.degraded
        elif self.degraded == WORK_DIR_UNWRITABLE and not self._work_dir_writable():
            return self.degraded
        log.warning("agent recovered from %s; taking new work again", self.degraded)
        self.degraded = ""
        self._changed()
        return ""

    def _work_dir_writable(self) -> bool:
        probe = self._work_root / ".meridian-probe"
        try:
            self._work_root.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"ok")
            probe.unlink()
            return True
        except OSError:
            with contextlib.suppress(OSError):
                probe.unlink()
            return False

    async def run_probe(self) -> None:
        """Probe off the event loop every ``health_probe_s`` until cancelled."""
        while True:
            await asyncio.sleep(self._limits.health_probe_s)
            try:
                await asyncio.to_thread(self.probe)
            except Exception:
                log.exception("health probe failed")


class StallMeter:
    """The longest event-loop stall since it was last read: each heartbeat carries it, so a
    blocked agent is visible to operators at the control plane, not only in its own log."""

    def __init__(self) -> None:
        self._longest_s = 0.0

    def record(self, stall_s: float) -> None:
        self._longest_s = max(self._longest_s, stall_s)

    def take_ms(self) -> int:
        longest, self._longest_s = self._longest_s, 0.0
        return min(int(longest * 1000), 2**32 - 1)


async def loop_watchdog(stall_s: float, on_stall: Callable[[float], None] | None = None) -> None:
    """Log whenever the event loop was blocked longer than ``stall_s`` (until cancelled).

    It sleeps a fraction of the threshold and measures how late it woke: a late wake-up is time
    the loop spent on something that should have run elsewhere.
    """
    loop = asyncio.get_running_loop()
    tick = max(0.01, stall_s / 4)
    while True:
        before = loop.time()
        await asyncio.sleep(tick)
        late = loop.time() - before - tick
        if late > stall_s:
            log.warning("agent event loop was blocked for %.2f s (threshold %.2f s)", late, stall_s)
            if on_stall is not None:
                on_stall(late)
