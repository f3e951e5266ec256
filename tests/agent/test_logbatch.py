"""Log lines are batched by count and by delay, and nothing buffered is lost."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from agent.logbatch import pump_logs
from agent.reports import LogChunk, LogLine
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


def test_a_flood_keeps_head_and_tail_and_says_what_was_dropped() -> None:
    from agent.logbatch import LogCaps

    chunks: list[LogChunk] = []
    caps = LogCaps(head_bytes=10_000, tail_bytes=5_000, rate_bytes_per_s=1e12, burst_bytes=10**12)
    n = 200_000  # ~20 MB of lines: memory stays at the tail plus one chunk
    asyncio.run(pump_logs(_sized(n, 100), chunks.append, caps=caps, max_delay_s=10))
    texts = [line.text for chunk in chunks for line in chunk.lines]
    notices = [t for t in texts if "dropped" in t]
    assert len(notices) == 1
    kept = [t for t in texts if "dropped" not in t]
    assert kept[0].startswith("0 ") and kept[-1].startswith(f"{n - 1} ")
    assert sum(len(t) + 1 for t in kept) <= 10_000 + 5_000
    dropped_lines = int(notices[0].split()[1])
    assert dropped_lines + len(kept) == n


def test_the_rate_limit_drops_bursts_but_keeps_the_latest_lines() -> None:
    from agent.logbatch import LogCapper, LogCaps

    capper = LogCapper(
        LogCaps(head_bytes=10**9, tail_bytes=300, rate_bytes_per_s=100, burst_bytes=200), now=0.0
    )
    shipped: list[str] = []
    for i in range(50):
        line = LogLine(0, "stdout", f"{i:02d}" + "x" * 48)
        shipped += [ln.text for ln in capper.offer(line, now=0.0)]
    assert len(shipped) == 3  # the burst
    # Time passes: the rate allows the kept tail out, after the notice.
    shipped += [ln.text for ln in capper.release(now=100.0)]
    assert "dropped" in shipped[3] and shipped[-1].startswith("49")


def _sized(n: int, width: int):  # type: ignore[no-untyped-def]
    async def gen():  # type: ignore[no-untyped-def]
        for i in range(n):
            yield LogRecord("stdout", f"{i} " + "y" * width, 0)

    return gen()


def test_get_logger_records_ship_under_their_level_and_plain_lines_stay_as_they_are() -> None:
    from meridian.core.runlog import encode_record

    texts: list[tuple[str, str]] = [
        ("stdout", "plain print"),
        ("stderr", encode_record("debug", "meridian.run", "dbg")),
        ("stderr", encode_record("warning", "meridian.run.etl", "two\nlines", "Traceback:\n  x")),
        ("stderr", "::meridian-log::{broken"),  # not a record: an ordinary stderr line
        ("stderr", encode_record("error", "meridian.run", "token=s3cret")),
    ]

    async def records() -> AsyncIterator[LogRecord]:
        for stream, text in texts:
            yield LogRecord(stream, text, 7)  # type: ignore[arg-type]

    chunks: list[LogChunk] = []

    async def scenario() -> None:
        await pump_logs(records(), chunks.append, scrub=lambda t: t.replace("s3cret", "***"))

    asyncio.run(scenario())
    lines = [(ln.stream, ln.text) for c in chunks for ln in c.lines]
    assert lines == [
        ("stdout", "plain print"),
        ("debug", "dbg"),
        ("warning", "etl: two"),
        ("warning", "lines"),
        ("warning", "Traceback:"),
        ("warning", "  x"),
        ("stderr", "::meridian-log::{broken"),
        ("error", "token=***"),
    ]


def test_a_record_of_many_short_lines_is_bounded() -> None:
    from agent.logbatch import MAX_RECORD_LINES, step_lines
    from meridian.core.runlog import encode_record

    record = LogRecord("stderr", encode_record("info", "meridian.run", "\n" * 5000), 1)
    assert len(step_lines(record)) == MAX_RECORD_LINES
