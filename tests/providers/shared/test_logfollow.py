"""providers.shared.logfollow: the follow loops behind the providers' ``logs``, without a provider.

Each source is scripted: a list of what each poll returns, so every line boundary, the end
condition and the pauses between polls are checked exactly.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TypeVar

import pytest

from providers.base import LogRecord
from providers.shared import logfollow
from providers.shared.filetail import FileTail
from providers.shared.logfollow import LogSnapshot, follow_pages, follow_snapshots, follow_tails
from tests.support.deadlines import DEADLINE_S

T = TypeVar("T")


async def collect(items: AsyncIterator[T]) -> list[T]:
    return [item async for item in items]


class Scripted:
    """Returns the scripted snapshots in turn; fails the test if polled past the end."""

    def __init__(self, *snapshots: LogSnapshot) -> None:
        self.snapshots = list(snapshots)
        self.calls = 0

    async def __call__(self) -> LogSnapshot:
        assert self.calls < len(self.snapshots), "polled after the final snapshot"
        self.calls += 1
        return self.snapshots[self.calls - 1]


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the follower's pauses instead of sleeping."""
    recorded: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        recorded.append(seconds)

    monkeypatch.setattr(logfollow.asyncio, "sleep", fake_sleep)
    return recorded


# ---- follow_snapshots ----------------------------------------------------------------------


def test_snapshots_yield_each_complete_line_once_in_order(sleeps: list[float]) -> None:
    source = Scripted(
        LogSnapshot(False, "a\nb"),  # "b" may still be being written
        LogSnapshot(False, "a\nb\nc\n"),
        LogSnapshot(False, "a\nb\nc\n"),  # nothing new
        LogSnapshot(True, "a\nb\nc\nd\n"),
    )
    lines = asyncio.run(collect(follow_snapshots(source, 0.25)))
    assert lines == ["a", "b", "c", "d"]
    assert source.calls == 4
    assert sleeps == [0.25, 0.25, 0.25]  # between polls, never after the final one


def test_snapshots_yield_the_unterminated_last_line_only_once_ended(sleeps: list[float]) -> None:
    source = Scripted(LogSnapshot(False, "x\npart"), LogSnapshot(True, "x\npartial end"))
    assert asyncio.run(collect(follow_snapshots(source, 0.1))) == ["x", "partial end"]


def test_snapshots_keep_empty_lines_but_not_the_final_newline(sleeps: list[float]) -> None:
    source = Scripted(LogSnapshot(True, "\nmiddle\n\nlast\n"))
    assert asyncio.run(collect(follow_snapshots(source, 0.1))) == ["", "middle", "", "last"]


def test_snapshot_without_text_neither_yields_nor_ends(sleeps: list[float]) -> None:
    source = Scripted(
        LogSnapshot(False, "one\n"),
        LogSnapshot(False, None),  # e.g. a transient API error
        LogSnapshot(False, ""),
        LogSnapshot(True, "one\ntwo\n"),
    )
    assert asyncio.run(collect(follow_snapshots(source, 0.1))) == ["one", "two"]
    assert source.calls == 4


def test_snapshots_end_right_away_when_ended_without_output(sleeps: list[float]) -> None:
    for text in (None, ""):
        source = Scripted(LogSnapshot(True, text))
        assert asyncio.run(collect(follow_snapshots(source, 0.1))) == []
        assert source.calls == 1
    assert sleeps == []


def test_a_final_snapshot_shorter_than_what_was_sent_adds_nothing(sleeps: list[float]) -> None:
    source = Scripted(LogSnapshot(False, "a\nb\nc\n"), LogSnapshot(True, "a\n"))
    assert asyncio.run(collect(follow_snapshots(source, 0.1))) == ["a", "b", "c"]


def test_snapshot_errors_propagate(sleeps: list[float]) -> None:
    async def broken() -> LogSnapshot:
        raise RuntimeError("the API is gone")

    with pytest.raises(RuntimeError, match="the API is gone"):
        asyncio.run(collect(follow_snapshots(broken, 0.1)))


# ---- follow_tails --------------------------------------------------------------------------


def test_tails_follow_files_and_flush_the_rest_once_ended(
    tmp_path: Path, sleeps: list[float]
) -> None:
    out, err = tmp_path / "out.log", tmp_path / "err.log"
    out.write_text("o1\n")
    tails = [FileTail("stdout", out), FileTail("stderr", err)]  # err does not exist yet
    polls: list[bool] = []

    async def ended() -> bool:
        polls.append(True)
        if len(polls) == 2:
            err.write_text("e1\n")
        if len(polls) == 4:  # written before "ended" is decided: the last read must see it
            with out.open("a") as fh:
                fh.write("o2\nno newline")
            return True
        return False

    records = asyncio.run(collect(follow_tails(tails, ended, 0.05)))
    assert [(r.stream, r.text) for r in records] == [
        ("stdout", "o1"),
        ("stderr", "e1"),
        ("stdout", "o2"),
        ("stdout", "no newline"),
    ]
    assert len(polls) == 4
    assert sleeps == [0.05]  # only after the poll that found nothing new (the third)
    assert all(t._fh is None for t in tails), "tails are closed at the end"


def test_tails_are_closed_when_the_consumer_stops_early(tmp_path: Path) -> None:
    path = tmp_path / "out.log"
    path.write_text("first\nsecond\n")
    tail = FileTail("stdout", path)

    async def never() -> bool:
        return False

    async def first_only() -> LogRecord:
        follower = follow_tails([tail], never, 0.05)
        record = await anext(follower)
        await follower.aclose()
        return record

    assert asyncio.run(first_only()).text == "first"
    assert tail._fh is None


def test_a_wake_set_after_the_ended_check_cuts_the_pause_short(tmp_path: Path) -> None:
    """The provider sets ``wake`` when it sees the attempt end; the follower then re-checks at
    once instead of sleeping out its poll interval (an hour here: it would hang the test)."""
    path = tmp_path / "out.log"
    path.write_text("line\n")
    wake = asyncio.Event()
    checks: list[bool] = []

    async def ended() -> bool:
        checks.append(wake.is_set())
        if len(checks) == 1:
            wake.set()  # the attempt ends right after the first check, during the read
            return False
        return True

    async def follow() -> list[LogRecord]:
        return await asyncio.wait_for(
            collect(follow_tails([FileTail("stdout", path)], ended, 3600.0, wake)), DEADLINE_S
        )

    records = asyncio.run(follow())
    assert [r.text for r in records] == ["line"]
    assert checks == [False, True]


def test_a_wake_already_set_before_the_check_does_not_spin(
    tmp_path: Path, sleeps: list[float]
) -> None:
    """A wake that was set before an ``ended`` check that still said no (the step's
    leftovers are being cleaned up) pauses normally instead of polling in a tight loop."""
    path = tmp_path / "out.log"
    path.write_text("")
    wake = asyncio.Event()
    wake.set()
    checks = 0

    async def ended() -> bool:
        nonlocal checks
        checks += 1
        return checks >= 3

    records = asyncio.run(collect(follow_tails([FileTail("stdout", path)], ended, 0.05, wake)))
    assert records == []
    assert sleeps == [0.05, 0.05]


# ---- follow_pages --------------------------------------------------------------------------


def page(*texts: str) -> list[LogRecord]:
    return [LogRecord("stdout", text, 1) for text in texts]


class Pages:
    """Scripted reads of a cursor-based source and when the attempt is seen ended."""

    def __init__(self, reads: Sequence[list[LogRecord]], ended_from_call: int) -> None:
        self.reads = list(reads)
        self.ended_from_call = ended_from_call
        self.read_calls = 0
        self.ended_calls = 0

    async def read(self) -> list[LogRecord]:
        self.read_calls += 1
        return self.reads.pop(0) if self.reads else []

    async def ended(self) -> bool:
        self.ended_calls += 1
        return self.ended_calls >= self.ended_from_call


def test_pages_stop_at_the_first_empty_read_once_complete(sleeps: list[float]) -> None:
    pages = Pages([page("a"), [], page("b", "marker"), []], ended_from_call=3)
    complete = {"yes": False}

    async def run() -> list[LogRecord]:
        got = []
        async for record in follow_pages(
            pages.read,
            pages.ended,
            lambda: complete["yes"],
            poll_interval_s=0.5,
            settle_s=60.0,
        ):
            got.append(record)
            complete["yes"] = record.text == "marker"
        return got

    assert [r.text for r in asyncio.run(run())] == ["a", "b", "marker"]
    assert pages.read_calls == 4
    assert pages.ended_calls == 3  # asked before each read until it first said yes
    assert sleeps == [0.5]  # after the empty read while running; none straight after records


def test_pages_wait_out_the_settle_time_for_late_records(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float]
) -> None:
    clock = {"now": 100.0}
    monkeypatch.setattr(logfollow.time, "monotonic", lambda: clock["now"])

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock["now"] += seconds

    monkeypatch.setattr(logfollow.asyncio, "sleep", fake_sleep)
    pages = Pages([[], [], page("late"), []], ended_from_call=1)
    records = asyncio.run(
        collect(
            follow_pages(pages.read, pages.ended, lambda: False, poll_interval_s=1.0, settle_s=2.5)
        )
    )
    assert [r.text for r in records] == ["late"]
    # ended at t=100: empty reads at 100, 101; "late" at 102; then empty at 102, 103 -> settled
    assert clock["now"] == 103.0
    assert pages.read_calls == 5
