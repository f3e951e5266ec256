"""Following an attempt's output while it runs: the log loops the providers share.

Every provider's ``logs(handle)`` has the same shape: look whether the attempt has ended, read
what output there is, yield what was not yielded before, and stop once the attempt has ended and
that last read is done. Deciding "ended" *before* the read is what makes the last read complete:
everything the attempt wrote was written before it ended. The loops differ only in the kind of
source they read, so there is one follower per kind:

``follow_snapshots``
    Sources that return the whole log so far on every read (a pod log, an Azure container log,
    a Ray job log). The follower remembers how many lines it yielded and yields the rest.
``follow_tails``
    Files that grow on a (shared) filesystem, read incrementally by ``FileTail`` (the process
    and Slurm providers).
``follow_pages``
    Cloud log services that hand out the records after a cursor and deliver them late (the
    awslogs stream of an ECS task, Cloud Logging for Cloud Run): after the attempt ended, reading
    goes on until the source is complete or a settle time has passed.

All are async generators: the provider's own ``logs`` iterates them and turns or filters lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

from providers.base import LogRecord
from providers.shared.filetail import FileTail


@dataclass(frozen=True)
class LogSnapshot:
    """One read of a whole-log source.

    ``ended``: the attempt had ended *before* ``text`` was read, so ``text`` is final.
    ``text``: the complete log so far, or None when nothing could be read this time (a transient
    API error, no pod yet); None never ends the stream on its own.
    """

    ended: bool
    text: str | None


async def follow_snapshots(
    snapshot: Callable[[], Awaitable[LogSnapshot]],
    poll_interval_s: float,
) -> AsyncIterator[str]:
    """Yield each line of a growing log once, in order, without its ``\\n``.

    ``snapshot`` is called once per poll and returns the whole log so far. Complete lines are
    yielded as they appear; a last line without its newline is held back (it may still be being
    written) until a snapshot says the attempt ended, then yielded if it is not empty. The
    generator returns right after the first snapshot with ``ended`` set, and sleeps
    ``poll_interval_s`` between snapshots. Exceptions from ``snapshot`` propagate: a provider
    that wants to ride out a transient error returns ``LogSnapshot(False, None)`` instead.

    Lines are counted, not characters: the source must only ever append (logs do). A final
    snapshot shorter than what was already yielded yields nothing more.
    """
    sent = 0  # lines already yielded, counting only complete ones until the end
    while True:
        current = await snapshot()
        lines = current.text.split("\n") if current.text else []
        if lines and (not current.ended or lines[-1] == ""):
            lines.pop()  # a line still being written, or the "" after the final newline
        for line in lines[sent:]:
            yield line
        sent = max(sent, len(lines))
        if current.ended:
            return
        await asyncio.sleep(poll_interval_s)


async def follow_tails(
    tails: Sequence[FileTail],
    ended: Callable[[], Awaitable[bool]],
    poll_interval_s: float,
    wake: asyncio.Event | None = None,
) -> AsyncIterator[LogRecord]:
    """Yield the records of growing files, in file order per poll, until the attempt ended.

    Each poll first asks ``ended`` (before reading, so the last read is complete), then reads
    every tail in turn. Once ``ended`` said so, the rest of each file, including a last line
    without its newline, is yielded and the generator returns. It sleeps ``poll_interval_s``
    only after a poll that found nothing new, so a chatty step is followed without delay.
    ``wake``, when given, cuts that sleep short: a provider sets it when it has seen the
    attempt end, so the last read follows at once instead of up to a poll interval later (the
    agent waits for the logs before it reports the outcome). The tails are closed when the
    generator finishes or is closed early.
    """
    try:
        while True:
            # Set before this ``ended`` check: it cannot make the next check any different.
            woken_before = wake is not None and wake.is_set()
            done = await ended()
            got = False
            for tail in tails:
                # File reads happen in a worker thread: a slow or huge file never blocks the
                # event loop. Each read returns at most one chunk, so memory stays bounded.
                for record in await asyncio.to_thread(tail.read):
                    got = True
                    yield record
            if done:
                for tail in tails:
                    while tail.more:
                        for record in await asyncio.to_thread(tail.read):
                            yield record
                    for record in await asyncio.to_thread(tail.finish):
                        yield record
                return
            if not got:
                await _pause(poll_interval_s, None if woken_before else wake)
    finally:
        for tail in tails:
            tail.close()


async def _pause(seconds: float, wake: asyncio.Event | None) -> None:
    """Sleep ``seconds``, or less if ``wake`` is (or gets) set: the attempt ended after this
    poll's ``ended`` check, so the next check is worth making at once."""
    if wake is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(wake.wait(), seconds)


async def follow_pages(
    read: Callable[[], Awaitable[Sequence[LogRecord]]],
    ended: Callable[[], Awaitable[bool]],
    complete: Callable[[], bool],
    *,
    poll_interval_s: float,
    settle_s: float,
) -> AsyncIterator[LogRecord]:
    """Yield the records of a cursor-based log source until it settled after the attempt ended.

    ``read`` returns the records delivered since its previous call (it keeps the cursor).
    ``ended`` is asked before each read until it first says True; from then on the source has
    ``settle_s`` seconds to deliver the rest, because such services deliver with a delay. The
    generator returns after a read that brought nothing once the attempt ended and either
    ``complete()`` says all expected output arrived (e.g. the outcome marker was read) or the
    settle time is over. A read that brought records is followed by another read at once; an
    empty one by a pause of ``poll_interval_s``.
    """
    settle_until: float | None = None
    while True:
        if settle_until is None and await ended():
            settle_until = time.monotonic() + settle_s
        records = await read()
        for record in records:
            yield record
        if records:
            continue
        if settle_until is not None and (complete() or time.monotonic() >= settle_until):
            return
        await asyncio.sleep(poll_interval_s)
