"""``python -m tests.agent.results.storecrash POINT <meridian args>``: the real ``meridian`` CLI
whose agent SIGKILLs itself once while it puts a step's result into a filesystem store.

POINT is ``mid_put`` (a part of the bytes is written to the store's ``.incoming`` file and
fsynced; nothing is committed) or ``after_put`` (the object is committed; the finished report
is not journaled yet). Only test code patches the store; the agent is otherwise the production
one, in its own process.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from agent.results import FilesystemStore
from agent.results._base import SourceStream

POINTS = ("mid_put", "after_put")
PART_BYTES = 256 * 1024


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def arm(point: str) -> None:
    if point == "mid_put":

        def write(self: FilesystemStore, tmp: Path, stream: SourceStream) -> None:
            with stream, open(tmp, "xb") as out:
                out.write(stream.read(PART_BYTES))
                out.flush()
                os.fsync(out.fileno())
            _die()

        FilesystemStore._write = write  # type: ignore[method-assign]
        return
    original = FilesystemStore.put

    def put(self: FilesystemStore, *args: Any, **kwargs: Any) -> Any:
        original(self, *args, **kwargs)
        _die()

    FilesystemStore.put = put  # type: ignore[method-assign]


def main(argv: list[str]) -> int:
    point, *rest = argv
    if point not in POINTS:
        raise SystemExit(f"unknown crash point {point!r}; one of {', '.join(POINTS)}")
    arm(point)
    from meridian.cli.main import main as meridian_main

    return meridian_main(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
