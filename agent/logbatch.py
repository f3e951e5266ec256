"""Batching a provider's log lines into LogChunk reports, within a per-step cap and rate.

Each report is a journal write (an fsync), so lines are grouped: a chunk is emitted when it
holds ``max_lines`` lines or ``max_bytes`` of text, or ``max_delay_s`` after its first line,
whichever comes first. Lines are bounded so one runaway line cannot make a frame too large.

A step's logs are bounded (``LogCaps``): the first ``head_bytes`` are shipped as they come, at
most ``rate_bytes_per_s`` (with a burst of ``burst_bytes``). Lines beyond the head or the rate go
to a tail buffer that keeps only the last ``tail_bytes``; what falls out of it is counted. When
the rate allows again (or the stream ends) the tail is shipped after one notice line saying
"... N lines / M bytes dropped ...", so the step's logs say what is missing. Memory stays
bounded by the tail plus one chunk, however much a step prints.

A line that is a ``meridian.get_logger()`` record (``::meridian-log::{json}``, see
``meridian.core.runlog``) is shipped as the record's own lines under the stream named after
its level (``debug`` ... ``critical``), which ``runs logs --level`` filters on; a malformed
one stays a plain line. This runs here, on every provider's lines alike.

Shipping applies backpressure instead of buffering: the reader stops pulling records from the
provider while ``HIGH_WATER`` records wait, and each emit is awaited (the journal write runs in
a worker thread), so a flood slows the file tail down rather than the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from agent.reports import LogChunk, LogLine, LogStream
from meridian.core.runlog import LOG_MARKER, decode_record
from providers.base import LogRecord

MAX_LINES = 200
MAX_DELAY_S = 0.1
MAX_CHUNK_BYTES = 256 * 1024
MAX_LINE_CHARS = 8192
# A get_logger() record is at most one 15 KiB line on the step's side; as lines, a traceback
# of many short lines must not become more log lines than its bytes would have made.
MAX_RECORD_LINES = 500
_LEVEL_STREAMS: dict[str, LogStream] = {
    "debug": "debug",
    "info": "info",
    "warning": "warning",
    "error": "error",
    "critical": "critical",
}
HIGH_WATER = 1000  # records read ahead of shipping before the reader waits
MiB = 1024 * 1024


@dataclass(frozen=True)
class LogCaps:
    head_bytes: int = 4 * MiB
    tail_bytes: int = 1 * MiB
    rate_bytes_per_s: float = 1 * MiB
    burst_bytes: int = 8 * MiB


def dropped_notice(lines: int, size: int, at_unix_ms: int) -> LogLine:
    return LogLine(
        at_unix_ms,
        "agent",
        f"... {lines} lines / {size} bytes dropped (over this step's log limits; "
        "see docs/reliability.md) ...",
    )


class LogCapper:
    """Decides, line by line, what of a step's output is shipped, kept for the tail, or
    dropped; pure apart from the clock it is given."""

    def __init__(self, caps: LogCaps, now: float) -> None:
        self._caps = caps
        self._tokens = float(caps.burst_bytes)
        self._clock = now
        self._shipped = 0
        self._tail: deque[LogLine] = deque()
        self._tail_bytes = 0
        self.dropped_lines = 0
        self.dropped_bytes = 0
        self.total_dropped_lines = 0
        self.total_dropped_bytes = 0

    @property
    def overflowing(self) -> bool:
        return bool(self._tail) or self.dropped_lines > 0

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._clock)
        self._clock = now
        self._tokens = min(
            float(self._caps.burst_bytes), self._tokens + elapsed * self._caps.rate_bytes_per_s
        )

    def offer(self, line: LogLine, now: float) -> list[LogLine]:
        """Lines to ship now (possibly none) after ``line`` arrived."""
        self._refill(now)
        size = len(line.text) + 1
        if not self.overflowing and self._fits(size):
            self._take(size)
            return [line]
        self._keep(line, size)
        return self.release(now)

    def _fits(self, size: int) -> bool:
        return self._shipped + size <= self._caps.head_bytes and self._tokens >= size

    def _take(self, size: int) -> None:
        self._shipped += size
        self._tokens -= size

    def _keep(self, line: LogLine, size: int) -> None:
        self._tail.append(line)
        self._tail_bytes += size
        while self._tail_bytes > self._caps.tail_bytes and self._tail:
            old = self._tail.popleft()
            old_size = len(old.text) + 1
            self._tail_bytes -= old_size
            self.dropped_lines += 1
            self.dropped_bytes += old_size
            self.total_dropped_lines += 1
            self.total_dropped_bytes += old_size

    def release(self, now: float, *, final: bool = False) -> list[LogLine]:
        """The notice and the kept tail, once the rate (and head) allow or at the end."""
        self._refill(now)
        if not self.overflowing:
            return []
        # The tail goes out once the head has room for it and the bucket holds as much of it
        # as a burst can (tokens may go into debt: the rate catches up afterwards).
        room = self._shipped + self._tail_bytes <= self._caps.head_bytes
        if not final and not (
            room and self._tokens >= min(self._tail_bytes, self._caps.burst_bytes)
        ):
            return []
        out: list[LogLine] = []
        if self.dropped_lines:
            at = self._tail[0].at_unix_ms if self._tail else 0
            out.append(dropped_notice(self.dropped_lines, self.dropped_bytes, at))
        out.extend(self._tail)
        if not final:
            self._take(self._tail_bytes)
        self._tail.clear()
        self._tail_bytes = 0
        self.dropped_lines = self.dropped_bytes = 0
        return out


async def pump_logs(
    records: AsyncIterator[LogRecord],
    emit: Callable[[LogChunk], object],
    *,
    max_lines: int = MAX_LINES,
    max_delay_s: float = MAX_DELAY_S,
    max_bytes: int = MAX_CHUNK_BYTES,
    scrub: Callable[[str], str] | None = None,
    caps: LogCaps | None = None,
) -> None:
    """Read ``records`` to the end, emitting batched chunks; flushes what it holds on cancel.

    ``scrub`` redacts each line (``step_lines``). ``emit`` may return an awaitable; it is
    awaited before the next chunk (backpressure).
    """
    queue: asyncio.Queue[LogRecord | None] = asyncio.Queue()
    room = asyncio.Event()
    room.set()
    # A separate reader task: timing out a wait on the queue is safe, timing out a pending
    # __anext__ of the provider's async generator would close the generator.
    reader = asyncio.ensure_future(_read(records, queue, room))
    loop = asyncio.get_running_loop()
    capper = LogCapper(caps or LogCaps(), loop.time())
    batch = _Batch(emit, max_lines, max_bytes)
    deadline = 0.0
    try:
        while True:
            if batch.lines:
                timeout: float | None = max(0.0, deadline - loop.time())
            elif capper.overflowing:
                timeout = max_delay_s  # look again whether the rate allows the tail out
            else:
                timeout = None
            try:
                # Take what is queued without waiting; wait (with a timer) only when empty.
                record = queue.get_nowait() if not queue.empty() else None
                if record is None and not (reader.done() and queue.empty()):
                    record = await asyncio.wait_for(queue.get(), timeout)
            except TimeoutError:
                record = None
                await batch.add(capper.release(loop.time()))
            else:
                if queue.qsize() < HIGH_WATER // 2:
                    room.set()
                if record is None:  # the provider's stream ended
                    break
                for line in step_lines(record, scrub):
                    await batch.add(capper.offer(line, loop.time()))
            if batch.lines and not deadline:
                deadline = loop.time() + max_delay_s
            if batch.lines and (batch.full() or loop.time() >= deadline):
                await batch.flush()
                deadline = 0.0
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        await batch.add(capper.release(loop.time(), final=True))
        await batch.flush()


def step_lines(record: LogRecord, scrub: Callable[[str], str] | None = None) -> list[LogLine]:
    """The log lines of one provider record: itself, or the lines of a ``get_logger()`` record
    (a marker line, see ``meridian.core.runlog``) under the stream named after its level.

    ``scrub`` (the attempt's secret redaction) runs on each whole line before it is cut to
    ``MAX_LINE_CHARS``, so a cut can never leave half of a secret unrecognised.
    """
    decoded = decode_record(record.text) if record.text.startswith(LOG_MARKER) else None
    stream: LogStream = record.stream
    texts = [record.text]
    if decoded is not None:
        stream, texts = _LEVEL_STREAMS[decoded[0]], decoded[1][:MAX_RECORD_LINES]
    return [
        LogLine(record.at_unix_ms, stream, (scrub(t) if scrub is not None else t)[:MAX_LINE_CHARS])
        for t in texts
    ]


class _Batch:
    def __init__(self, emit: Callable[[LogChunk], object], max_lines: int, max_bytes: int) -> None:
        self._emit = emit
        self._max_lines = max_lines
        self._max_bytes = max_bytes
        self.lines: list[LogLine] = []
        self._size = 0

    def full(self) -> bool:
        return len(self.lines) >= self._max_lines or self._size >= self._max_bytes

    async def add(self, lines: list[LogLine]) -> None:
        for line in lines:
            self.lines.append(line)
            self._size += len(line.text)
            if self.full():
                await self.flush()

    async def flush(self) -> None:
        if not self.lines:
            return
        chunk = LogChunk(tuple(self.lines))
        self.lines, self._size = [], 0
        result = self._emit(chunk)
        if inspect.isawaitable(result):
            await result


async def _read(
    records: AsyncIterator[LogRecord], queue: asyncio.Queue[LogRecord | None], room: asyncio.Event
) -> None:
    try:
        async for record in records:
            queue.put_nowait(record)
            if queue.qsize() >= HIGH_WATER:
                room.clear()
                await room.wait()
    finally:
        queue.put_nowait(None)
