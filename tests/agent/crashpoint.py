"""``python -m tests.agent.crashpoint KIND POINT <meridian args>``: the real ``meridian`` CLI
whose agent SIGKILLs itself at one point of the journal batch holding its first ``KIND`` report.

POINT is ``before_commit`` (the batch is handed to SQLite but nothing is written),
``after_commit`` (durable, not yet sent) or ``before_ack`` (sent, the control plane applied and
acked it, the agent dies before deleting it). Only test code patches the journal; the agent is
otherwise the production one, in its own process.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence

from agent.journal import Ack, Append, Journal, JournalEntry, JournalOp

POINTS = ("before_commit", "after_commit", "before_ack")


def arm(kind: str, point: str) -> None:
    original = Journal.write_batch
    committed: list[int] = []  # seq of the watched report once it is durable

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def write_batch(self: Journal, ops: Sequence[JournalOp]) -> list[JournalEntry | None]:
        watched = any(isinstance(op, Append) and op.kind == kind for op in ops)
        if watched and point == "before_commit" and not committed:
            die()
        acked = any(
            isinstance(op, Ack) and committed and op.up_to_seq >= committed[0] for op in ops
        )
        if point == "before_ack" and acked:
            die()
        results = original(self, ops)
        if watched and not committed:
            committed.append(next(e.seq for e in results if e is not None and e.kind == kind))
            if point == "after_commit":
                die()
        return results

    Journal.write_batch = write_batch  # type: ignore[method-assign]


def main(argv: list[str]) -> int:
    kind, point, *rest = argv
    if point not in POINTS:
        raise SystemExit(f"unknown crash point {point!r}; one of {', '.join(POINTS)}")
    arm(kind, point)
    from meridian.cli.main import main as meridian_main

    return meridian_main(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
