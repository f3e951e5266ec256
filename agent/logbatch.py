"""Batching a provider's log lines into LogChunk reports.

Each report is a journal write (an fsync), so lines are grouped: a chunk is emitted when it
holds ``max_lines`` lines or ``max_bytes`` of text, or ``max_delay_s`` after its first line,
whichever comes first. Lines are bounded so one runaway line cannot make a frame too large.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from agent.reports import LogChunk, LogLine
from providers.base import LogRecord

MAX_LINES = 200
MAX_DELAY_S = 0.1
MAX_CHUNK_BYTES = 256 * 1024
MAX_LINE_CHARS = 8192


async def pump_logs(
    records: AsyncIterator[LogRecord],
    emit: Callable[[LogChunk], object],
    *,
    max_lines: int = MAX_LINES,
    max_delay_s: float = MAX_DELAY_S,
    max_bytes: int = MAX_CHUNK_BYTES,
    scrub: Callable[[str], str] | None = None,
) -> None:
    """Read ``records`` to the end, emitting batched chunks; flushes what it holds on cancel.

    ``scrub`` (the attempt's secret redaction) runs on each whole line before it is cut to
    ``MAX_LINE_CHARS``, so a cut can never leave half of a secret unrecognised.
    """
    queue: asyncio.Queue[LogRecord | None] = asyncio.Queue()
    # A separate reader task: timing out a wait on the queue is safe, timing out a pending
    # __anext__ of the provider's async generator would close the generator.
    reader = asyncio.ensure_future(_read(records, queue))
    loop = asyncio.get_running_loop()
    buffer: list[LogLine] = []
    size = 0
    deadline = 0.0
    try:
        while True:
            timeout = max(0.0, deadline - loop.time()) if buffer else None
            try:
                record = await asyncio.wait_for(queue.get(), timeout)
            except TimeoutError:
                pass  # the batch's delay is over: flush below
            else:
                if record is None:  # the provider's stream ended
                    break
                if not buffer:
                    deadline = loop.time() + max_delay_s
                text = scrub(record.text) if scrub is not None else record.text
                buffer.append(LogLine(record.at_unix_ms, record.stream, text[:MAX_LINE_CHARS]))
                size += len(buffer[-1].text)
            if buffer and (
                len(buffer) >= max_lines or size >= max_bytes or loop.time() >= deadline
            ):
                emit(LogChunk(tuple(buffer)))
                buffer, size = [], 0
    finally:
        if buffer:
            emit(LogChunk(tuple(buffer)))
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


async def _read(records: AsyncIterator[LogRecord], queue: asyncio.Queue[LogRecord | None]) -> None:
    try:
        async for record in records:
            queue.put_nowait(record)
    finally:
        queue.put_nowait(None)
