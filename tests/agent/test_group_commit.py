"""Group commit: many reports and handle changes per transaction, still durable before use."""

from __future__ import annotations

import asyncio
import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from agent import convert, handles
from agent.commits import GroupCommitter
from agent.handles import HandleStore, StoredHandle
from agent.health import DISK_FULL, Health
from agent.journal import Append, Journal, JournalEntry, JournalOp
from agent.limits import AgentLimits
from agent.reporter import Reporter
from agent.reports import AttemptFinished, HandleRecorded, LogChunk, LogLine
from tests.agent.test_protocol import connect, kinds, run_async, running_agent
from tests.support.deadlines import DEADLINE_S

REPO = Path(__file__).resolve().parents[2]


def chunk(text: str) -> LogChunk:
    return LogChunk((LogLine(0, "stdout", text),))


def texts(journal: Journal, attempt_id: str) -> list[str]:
    out = []
    for entry in journal.unacked(limit=100_000):
        if entry.attempt_id == attempt_id and entry.kind == "logs":
            body = convert.decode_report(entry.payload)[1]
            out.extend(line.text for line in body.lines)
    return out


def fsyncs(data_dir: Path, n: int, mode: str) -> int:
    """fsync + fdatasync system calls of a process journaling ``n`` reports (strace -c)."""
    summary = data_dir.parent / f"{mode}.strace"
    probe = [sys.executable, "-m", "tests.agent.fsync_probe", str(data_dir), str(n), mode]
    subprocess.run(
        ["strace", "-f", "-c", "-e", "trace=fsync,fdatasync", "-o", str(summary), *probe],
        check=True,
        cwd=REPO,
        timeout=DEADLINE_S,
        capture_output=True,
    )
    counts = re.findall(
        r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(?:fsync|fdatasync)$",
        summary.read_text(),
        re.M,
    )
    return sum(int(c) for c in counts)


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace to count fsync calls")
def test_concurrent_reports_share_a_few_fsyncs(tmp_path: Path) -> None:
    # SQLite calls fsync(2) itself, so the calls are counted at the system-call level.
    n = 100
    alone = fsyncs(tmp_path / "sequential", n, "sequential")
    together = fsyncs(tmp_path / "concurrent", n, "concurrent")
    assert alone >= n  # one commit (and fsync) per report when each waits for the last
    assert together <= n // 4, (together, alone)  # N concurrent reports: a handful of batches


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace to count fsync calls")
def test_acks_alone_are_not_fsynced(tmp_path: Path) -> None:
    # A lost ack only means a replay the control plane drops (last_applied_seq), so deleting
    # acked reports need not wait for the disk: N acks in a row cost no fsync each.
    n = 100
    assert fsyncs(tmp_path / "acks", n, "acks") <= n // 4


def test_concurrent_reports_commit_in_few_batches_and_keep_each_attempts_order(
    tmp_path: Path,
) -> None:
    journal = Journal(tmp_path)
    reporter = Reporter(journal)

    async def attempt(i: int) -> None:
        for k in range(10):  # each awaited: the next report of this attempt is a later batch
            await reporter.report(f"a{i}", 1, chunk(f"{i}:{k}"))

    async def scenario() -> None:
        await asyncio.gather(*(attempt(i) for i in range(40)))
        await reporter.close()

    asyncio.run(scenario())
    assert journal.count() == 400
    assert reporter.committer.batches <= 40  # ~10 rounds, far from 400 commits
    for i in range(40):
        assert texts(journal, f"a{i}") == [f"{i}:{k}" for k in range(10)]
    seqs = [e.seq for e in journal.unacked(limit=1000)]
    assert seqs == list(range(1, 401))


def test_a_cancelled_waiter_keeps_its_place_in_the_order(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    reporter = Reporter(journal)

    async def scenario() -> None:
        first = asyncio.ensure_future(reporter.report("a", 1, chunk("first")))
        await asyncio.sleep(0)  # handed in
        first.cancel()  # the runner stops waiting (e.g. its log pump is cancelled)
        await reporter.report("a", 1, AttemptFinished(outcome="succeeded", result_json="1"))
        await reporter.close()

    asyncio.run(scenario())
    assert [e.kind for e in journal.unacked()] == ["logs", "finished"]


def test_a_handle_commits_with_its_report_and_goes_with_the_outcome(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    reporter = Reporter(journal)
    stored = StoredHandle("a1", 3, "process", '{"pid": 1}')

    async def scenario() -> None:
        await reporter.report("a1", 3, HandleRecorded('{"pid": 1}', "pid-1"), save_handle=stored)
        assert HandleStore(tmp_path).load_all() == [stored]  # durable on return
        await reporter.report(
            "a1", 3, AttemptFinished(outcome="succeeded", result_json="1"), remove_handle=True
        )
        assert HandleStore(tmp_path).load_all() == []
        await reporter.close()

    asyncio.run(scenario())
    assert [e.kind for e in journal.unacked()] == ["handle", "finished"]


def test_a_failed_batch_writes_nothing_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = Journal(tmp_path)
    reporter = Reporter(journal)

    def broken(conn: sqlite3.Connection, stored: StoredHandle) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(handles, "save_row", broken)
    stored = StoredHandle("a1", 3, "process", "{}")

    async def scenario() -> None:
        others = asyncio.ensure_future(reporter.report("a2", 1, chunk("same batch")))
        with pytest.raises(sqlite3.OperationalError):
            await reporter.report("a1", 3, HandleRecorded("{}", "r"), save_handle=stored)
        with pytest.raises(sqlite3.OperationalError):
            await others  # it rode in the same transaction, which rolled back
        monkeypatch.undo()
        await reporter.report("a2", 1, chunk("next batch"))
        await reporter.close()

    asyncio.run(scenario())
    assert [(e.seq, e.attempt_id) for e in journal.unacked()] == [(1, "a2")]
    assert HandleStore(tmp_path).load_all() == []


class FullDiskJournal(Journal):
    """A journal whose first ``failures`` batches fail as SQLite does on a full disk."""

    def __init__(self, data_dir: Path, failures: int) -> None:
        super().__init__(data_dir)
        self.failures = failures

    def write_batch(self, ops: Sequence[JournalOp]) -> list[JournalEntry | None]:
        if self.failures > 0:
            self.failures -= 1
            raise sqlite3.OperationalError("database or disk is full")
        return super().write_batch(ops)


def test_a_full_disk_releases_the_reserve_and_degrades_then_retries_once(
    tmp_path: Path,
) -> None:
    limits = AgentLimits(disk_reserve_bytes=4096)
    health = Health(tmp_path, tmp_path / "work", limits)
    assert health.take_reserve()
    journal = FullDiskJournal(tmp_path, failures=1)
    committer = GroupCommitter(journal, health)

    async def scenario() -> None:
        (entry,) = await committer.submit([Append("logs", "a", 1, b"x")])
        assert entry is not None and entry.seq == 1
        journal.failures = 2  # the retry fails too: every waiter of the batch hears it
        results = await asyncio.gather(
            committer.submit([Append("logs", "a", 1, b"y")]),
            committer.submit([Append("finished", "b", 1, b"z")]),
            return_exceptions=True,
        )
        assert all(isinstance(r, sqlite3.OperationalError) for r in results), results
        await committer.close()

    asyncio.run(scenario())
    assert health.degraded == DISK_FULL
    assert not (tmp_path / "disk.reserve").exists()
    assert [e.payload for e in journal.unacked()] == [b"x"]


def test_an_assign_batch_starts_every_step_with_shared_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches: list[list[str]] = []
    original = Journal.write_batch

    def recording(self: Journal, ops: Sequence[JournalOp]) -> list[JournalEntry | None]:
        batches.append([op.kind for op in ops if isinstance(op, Append)])
        return original(self, ops)

    monkeypatch.setattr(Journal, "write_batch", recording)
    n = 8

    async def scenario() -> None:
        async with running_agent(tmp_path, capacity=n) as h:
            s = await connect(h)
            s.ack_everything()
            attempts = [(f"a{i}", i + 1) for i in range(n)]
            s.assign_many(attempts, run_for=3.0)
            reports = []
            while sum(r.WhichOneof("body") == "running" for r in reports) < n:
                reports.append(await s.next_report())
            for attempt_id, token in attempts:
                s.decide(attempt_id, token)
            done: set[str] = set()
            while len(done) < n:
                report = await s.next_report()
                reports.append(report)
                if report.WhichOneof("body") == "finished":
                    # All were started while the first still ran: concurrently, not in turn.
                    assert sorted(h.provider.submitted) == sorted(a for a, _ in attempts)
                    done.add(report.attempt_id)
            for attempt_id, _ in attempts:
                assert kinds(reports, attempt_id) == ["running", "handle", "finished"]
            assert s.report_frames < len(reports)  # reports travelled together

    run_async(scenario)
    proposals = [b.count("running") for b in batches if "running" in b]
    assert sum(proposals) == n
    assert len(proposals) <= 2, batches  # the whole frame's proposals in one (or two) commits
    handle_batches = [b for b in batches if "handle" in b]
    assert len(handle_batches) < n, batches
