"""Reports are bounded before they are journaled; undeliverable journal entries are quarantined."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from agent.connection import QUARANTINED_TYPE, Connection
from agent.journal import Journal
from agent.limits import AgentLimits
from agent.reporter import Reporter
from agent.reports import AttemptFinished, HeartbeatInfo, HelloInfo, LogChunk, LogLine
from providers.base import ErrorInfo

MiB = 1024 * 1024


def _hello() -> HelloInfo:
    return HelloInfo("t", {}, (), 1, (), "h", False)


def _beat() -> HeartbeatInfo:
    return HeartbeatInfo(0, (), False)


def _connection(journal: Journal, reporter: Reporter) -> Connection:
    return Connection(None, journal, reporter, lambda a: None, _hello, _beat)


def _decoded(journal: Journal) -> list[Any]:
    from agent import convert

    return [convert.decode_report(e.payload)[1] for e in journal.unacked()]


def test_an_oversize_result_becomes_a_permanent_explained_failure(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    reporter = Reporter(journal, AgentLimits(max_result_bytes=1 * MiB))
    big = AttemptFinished(outcome="succeeded", result_json='"' + "x" * (2 * MiB) + '"')
    asyncio.run(reporter.report("a1", 1, big))
    (finished,) = _decoded(journal)
    assert finished.outcome == "failed" and finished.error.error_class == "permanent"
    assert "2097154 bytes" in finished.error.message and "1048576" in finished.error.message
    assert "return its path or URL" in finished.error.message
    # Nothing larger than the limit is in the journal.
    assert all(len(e.payload) < MiB for e in journal.unacked())


def test_an_oversize_error_is_replaced_and_the_negotiated_frame_caps_the_limit(
    tmp_path: Path,
) -> None:
    journal = Journal(tmp_path)
    reporter = Reporter(journal, AgentLimits())
    reporter.negotiated(256 * 1024)  # the control plane's Welcome.max_frame_bytes
    error = ErrorInfo("transient", "builtins.ValueError", "e" * (300 * 1024))
    asyncio.run(reporter.report("a1", 1, AttemptFinished(outcome="failed", error=error)))
    (finished,) = _decoded(journal)
    assert finished.error.type == "meridian.ErrorTooLarge"
    assert "builtins.ValueError: eee" in finished.error.message
    # The frame size is remembered for the next start, before any Welcome.
    assert Reporter(Journal(tmp_path)).payload_limit == reporter.payload_limit


def test_a_log_chunk_over_the_frame_is_split_not_refused(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    reporter = Reporter(journal)
    reporter.negotiated(128 * 1024)
    lines = tuple(LogLine(0, "stdout", "z" * 8000) for _ in range(40))  # ~320 KB
    asyncio.run(reporter.report("a1", 1, LogChunk(lines)))
    entries = journal.unacked()
    assert len(entries) > 1 and all(len(e.payload) <= reporter.payload_limit for e in entries)
    assert sum(len(b.lines) for b in _decoded(journal)) == 40


def test_an_undecodable_entry_is_quarantined_and_its_attempt_reported(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    reporter = Reporter(journal)
    seq = journal.append("finished", "a1", 3, b"\xff\xfe not a protobuf")
    connection = _connection(journal, reporter)
    entry = journal.unacked()[0]
    problem = connection._deliverable(entry)
    assert problem is not None
    asyncio.run(connection._quarantine(entry, problem))
    (moved, reason) = journal.quarantined()[0]
    assert moved.seq == seq and reason == problem
    # Not replayed again; instead the attempt is reported failed with the reason.
    (replacement,) = journal.unacked()
    assert replacement.seq > seq and replacement.attempt_id == "a1"
    assert replacement.fencing_token == 3
    (finished,) = _decoded(journal)
    assert finished.error.type == QUARANTINED_TYPE and "undecodable" in finished.error.message
    # It survives a restart in quarantine, never back in the outbox.
    reopened = Journal(tmp_path)
    assert [e.seq for e in reopened.unacked()] == [replacement.seq]
    assert len(reopened.quarantined()) == 1


def test_an_entry_larger_than_the_frame_is_not_deliverable(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    reporter = Reporter(journal)
    reporter.negotiated(128 * 1024)
    from agent import convert

    kind, payload = convert.encode_report(
        AttemptFinished(outcome="succeeded", result_json="1" * (200 * 1024)), 1
    )
    journal.append(kind, "a1", 1, payload)  # e.g. journaled by an older agent version
    problem = _connection(journal, reporter)._deliverable(journal.unacked()[0])
    assert problem is not None and "frame limit" in problem


def test_limits_from_config_refuse_unknown_keys_and_bad_values() -> None:
    assert AgentLimits.from_mapping({"log_head_bytes": 1024}).log_head_bytes == 1024
    assert AgentLimits.from_mapping({"loop_stall_s": 0.5}).loop_stall_s == 0.5
    for bad in ({"nope": 1}, {"log_head_bytes": -1}, {"log_head_bytes": 1.5}, {"x": True}):
        try:
            AgentLimits.from_mapping(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad} was accepted")
