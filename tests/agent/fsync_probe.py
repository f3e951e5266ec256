"""``python -m tests.agent.fsync_probe DATA_DIR N MODE``: journal N reports through a real
Reporter, ``concurrent`` (N runners at once) or ``sequential`` (each awaited before the next);
``acks``: N reports at once, then N acks one after another (as Ack frames arrive).

Run under ``strace -f -c -e trace=fsync,fdatasync`` to count the fsyncs SQLite really issues
(it calls fsync(2) itself, so wrapping Python's ``os.fsync`` would count none of them).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from agent.journal import Journal
from agent.reporter import Reporter
from agent.reports import LogChunk, LogLine


async def journal_reports(data_dir: Path, n: int, mode: str) -> int:
    journal = Journal(data_dir)
    reporter = Reporter(journal)

    def body(i: int) -> LogChunk:
        return LogChunk((LogLine(0, "stdout", f"report {i}"),))

    if mode == "sequential":
        for i in range(n):
            await reporter.report(f"a{i}", 1, body(i))
    else:
        await asyncio.gather(*(reporter.report(f"a{i}", 1, body(i)) for i in range(n)))
    if mode == "acks":
        for seq in range(1, n + 1):
            await reporter.ack(seq)
    await reporter.close()
    count = journal.count() + (n if mode == "acks" else 0)
    journal.close()
    return count


def main(argv: list[str]) -> int:
    data_dir, n, mode = Path(argv[0]), int(argv[1]), argv[2]
    journaled = asyncio.run(journal_reports(data_dir, n, mode))
    print(f"journaled {journaled}")
    return 0 if journaled == n else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
