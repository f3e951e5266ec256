"""Log lines are batched by count and by delay, and nothing buffered is lost."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from agent.logbatch import pump_logs
from agent.reports import LogChunk
from providers.base import LogRecord


async def _records(n: int, pause_after: int | None = None) -> AsyncIterator[LogRecord]:
    for i in range(n):
        if i == pause_after:
            await asyncio.sleep(0.3)
        yield LogRecord("stdout", f"l{i}", i)


def test_batches_by_line_count() -> None:
    chunks: list[LogChunk] = []
    asyncio.run(pump_logs(_records(450), chunks.append, max_lines=200, max_delay_s=10))
    assert [len(c.lines) for c in chunks] == [200, 200, 50]
    assert [ln.text for c in chunks for ln in c.lines] == [f"l{i}" for i in range(450)]


def test_flushes_after_the_delay_while_the_stream_is_quiet() -> None:
    chunks: list[LogChunk] = []
    asyncio.run(pump_logs(_records(5, pause_after=3), chunks.append, max_delay_s=0.05))
    assert [len(c.lines) for c in chunks] == [3, 2]


def test_cancel_flushes_what_is_buffered() -> None:
    chunks: list[LogChunk] = []

    async def endless() -> AsyncIterator[LogRecord]:
        yield LogRecord("stderr", "last words", 1)
        await asyncio.sleep(60)
        yield LogRecord("stderr", "never", 2)

    async def scenario() -> None:
        task = asyncio.ensure_future(pump_logs(endless(), chunks.append, max_delay_s=30))
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    assert [ln.text for c in chunks for ln in c.lines] == ["last words"]
