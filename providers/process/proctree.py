"""Processes and process groups on Linux, by pid: no scan of every ``/proc`` entry.

A process is named by its pid *and* its kernel start time, so a recycled pid is never taken
for our process. Whether a process ended is watched through a pidfd (readable once it exits);
whether a process group still has members is one ``killpg(pgid, 0)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from dataclasses import dataclass

_POLL_S = 0.2  # only where pidfds are unavailable (Linux < 5.3)


@dataclass(frozen=True)
class _Stat:
    state: str
    pgid: int
    start_time: int  # clock ticks after boot (field 22): unique per pid incarnation


def read_stat(pid: int) -> _Stat | None:
    """The parts of /proc/<pid>/stat we need, or None when no such process exists."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read().decode("utf-8", errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = raw[raw.rfind(")") + 2 :].split()
    return _Stat(state=fields[0], pgid=int(fields[2]), start_time=int(fields[19]))


def leader_alive(pid: int, start_time: int | None) -> bool:
    """Whether the process itself still runs (a zombie has ended)."""
    stat = read_stat(pid)
    return (
        stat is not None
        and start_time is not None
        and stat.start_time == start_time
        and stat.state not in ("Z", "X")
    )


def owns_group(pid: int, start_time: int | None) -> bool:
    """Whether process group ``pid`` can still be ours.

    Linux never hands out a pid while it still names a process group, so when the leader's pid
    is free, the group's remaining members are the step's children; when the pid belongs to a
    process with another start time, our group is necessarily gone.
    """
    stat = read_stat(pid)
    return stat is None or (start_time is not None and stat.start_time == start_time)


def group_alive(pgid: int) -> bool:
    """Whether any process is left in group ``pgid`` (zombies not yet reaped count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process holds the group: it exists
    return True


def killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


async def wait_ended(pid: int, start_time: int | None, timeout_s: float | None) -> bool:
    """Wait until process ``pid`` (of that start time) has ended; False if ``timeout_s`` passed.

    The pidfd is opened before the start time is checked, so it names our process even if the
    pid is recycled right after.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except (OSError, AttributeError):
        return await _poll_ended(pid, start_time, timeout_s)
    try:
        if not leader_alive(pid, start_time):
            return True
        loop = asyncio.get_running_loop()
        readable: asyncio.Future[None] = loop.create_future()

        def on_readable() -> None:
            if not readable.done():
                readable.set_result(None)

        loop.add_reader(fd, on_readable)
        try:
            await asyncio.wait_for(readable, timeout_s)
            return True
        except TimeoutError:
            return False
        finally:
            loop.remove_reader(fd)
    finally:
        os.close(fd)


async def _poll_ended(pid: int, start_time: int | None, timeout_s: float | None) -> bool:
    loop = asyncio.get_running_loop()
    deadline = None if timeout_s is None else loop.time() + timeout_s
    while leader_alive(pid, start_time):
        if deadline is not None and loop.time() >= deadline:
            return False
        await asyncio.sleep(_POLL_S)
    return True


async def terminate_group(pid: int, start_time: int | None, pgid: int, grace_s: float) -> None:
    """SIGTERM group ``pgid``, SIGKILL what is left after ``grace_s``; no-op when it is empty.

    ``pid``/``start_time`` name the group's leader: when that pid now belongs to an unrelated
    process, the group is not ours any more and nothing is signalled.
    """
    if not owns_group(pid, start_time) or not group_alive(pgid):
        return
    killpg(pgid, signal.SIGTERM)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(0.0, grace_s)
    while loop.time() < deadline:
        await asyncio.sleep(0.02)
        if not group_alive(pgid):
            return
    killpg(pgid, signal.SIGKILL)
    for _ in range(100):  # SIGKILL is not instant: wait until the kernel tore them down
        if not group_alive(pgid):
            return
        await asyncio.sleep(0.02)
