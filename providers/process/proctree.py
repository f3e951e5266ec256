"""Process groups on Linux, read from /proc: telling our processes from recycled pids."""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass


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
    """Whether the step process itself still runs (a zombie has ended)."""
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


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in group ``pgid``."""
    members = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = read_stat(int(name))
            if stat is not None and stat.pgid == pgid and stat.state not in ("Z", "X"):
                members.append(int(name))
    return members


def killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)
