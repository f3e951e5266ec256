"""The journal: durable, ordered, never reuses a sequence number."""

from __future__ import annotations

import stat
from pathlib import Path

from agent.handles import HandleStore, StoredHandle
from agent.journal import JOURNAL_FILE, Journal


def test_seq_is_monotonic_across_reopen_and_never_reused(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    seqs = [journal.append("logs", "a1", 3, f"p{i}".encode()) for i in range(3)]
    assert seqs == [1, 2, 3]
    assert journal.ack(3) == 3 and journal.count() == 0
    journal.close()

    reopened = Journal(tmp_path)
    assert reopened.append("finished", "a1", 3, b"x") == 4  # not 1: acked numbers stay used
    assert reopened.last_seq() == 4
    reopened.close()


def test_unacked_pages_in_order_and_ack_deletes_prefix(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    for i in range(5):
        journal.append("logs", f"a{i % 2}", i, bytes([i]))
    page = journal.unacked(after_seq=1, limit=2)
    assert [e.seq for e in page] == [2, 3]
    assert (page[0].attempt_id, page[0].fencing_token, page[0].payload) == ("a1", 1, b"\x01")
    journal.ack(2)
    assert [e.seq for e in journal.unacked()] == [3, 4, 5]
    assert journal.count() == 3


def test_reconcile_drops_applied_reports(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    for _ in range(4):
        journal.append("logs", "a", 1, b"")
    journal.reconcile(last_applied_seq=2)
    assert [e.seq for e in journal.unacked()] == [3, 4]


def test_reconcile_renumbers_after_a_lost_journal(tmp_path: Path) -> None:
    # The control plane applied seq 100 already, so this journal must have been replaced:
    # its pending reports move above 100 instead of being dropped as "applied".
    journal = Journal(tmp_path)
    journal.append("running", "a", 1, b"r")
    journal.append("finished", "a", 1, b"f")
    journal.reconcile(last_applied_seq=100)
    assert [(e.seq, e.payload) for e in journal.unacked()] == [(101, b"r"), (102, b"f")]
    assert journal.append("logs", "a", 1, b"") == 103


def test_handles_persist_next_to_the_journal(tmp_path: Path) -> None:
    store = HandleStore(tmp_path)
    store.save(StoredHandle("a1", 4, "process", '{"pid": 1}'))
    store.save(StoredHandle("a2", 5, "process", '{"pid": 2}'))
    store.remove("a1")
    store.close()
    reopened = HandleStore(tmp_path)
    assert reopened.load_all() == [StoredHandle("a2", 5, "process", '{"pid": 2}')]
    assert (tmp_path / JOURNAL_FILE).exists()
    assert stat.S_ISREG((tmp_path / JOURNAL_FILE).stat().st_mode)
