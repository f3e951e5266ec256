"""One agent per data dir: an exclusive lock on ``<data dir>/agent.lock``.

Two agents on one data dir would connect with the same identity and knock each other off, and
share the journal, the work dirs and the sweepers. ``Agent.run`` therefore takes this lock
before it opens anything and holds it for the life of the process; ``meridian agent enroll``
takes it too, so an identity is never replaced under a running agent. The lock is
``flock`` on an open file: the kernel drops it when the process ends, however it ends, so a
killed agent never leaves a stale lock. The holder's pid is written in the file for the
message a second process gets. The descriptor is not inherited (PEP 446), so step and runner
processes the agent starts never hold it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from meridian.core.errors import ConflictError

LOCK_FILE = "agent.lock"


class DataDirInUse(ConflictError):
    """Another process holds the data dir's lock."""


class DataDirLock:
    """The held lock of one data dir; ``release`` (or process exit) frees it."""

    def __init__(self, data_dir: Path, fd: int) -> None:
        self.data_dir = data_dir
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, data_dir: Path, *, doing: str = "start another agent") -> DataDirLock:
        """Lock ``data_dir`` (which must exist) or raise ``DataDirInUse`` naming the holder;
        ``doing`` says what was refused, for the message."""
        path = Path(data_dir) / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise DataDirInUse(
                f"agent data dir {data_dir} is in use by pid {holder or 'unknown'}; "
                f"stop that agent first, or use another --data-dir to {doing}"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(Path(data_dir), fd)

    def release(self) -> None:
        """Free the lock (idempotent). The pid stays in the file: only the lock counts."""
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None


def _read_pid(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
