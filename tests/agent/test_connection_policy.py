"""Pure decisions of the connection worker: reconnect backoff and report batching."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from agent.connection import REPORT_OVERHEAD_BYTES, backoff_delay, batch_entries
from agent.journal import JournalEntry


def test_full_jitter_spans_zero_to_the_exponential_ceiling() -> None:
    assert backoff_delay(0, 0.5, 10.0, rand=lambda: 0.0) == 0.0
    assert backoff_delay(0, 0.5, 10.0, rand=lambda: 1.0) == 0.5
    assert backoff_delay(3, 0.5, 10.0, rand=lambda: 1.0) == 4.0
    assert backoff_delay(5, 0.5, 10.0, rand=lambda: 1.0) == 10.0  # capped
    assert backoff_delay(10_000, 0.5, 10.0, rand=lambda: 0.5) == 5.0  # no overflow


@given(attempt=st.integers(0, 200), seed=st.integers(0, 2**32))
def test_full_jitter_stays_within_bounds(attempt: int, seed: int) -> None:
    rng = random.Random(seed)
    delay = backoff_delay(attempt, 0.2, 10.0, rand=rng.random)
    assert 0.0 <= delay <= min(10.0, 0.2 * 2**attempt)


def _entry(seq: int, size: int) -> JournalEntry:
    return JournalEntry(seq, "logs", "a", 1, b"x" * size)


def test_batches_respect_the_frame_limit_and_keep_order() -> None:
    cost = 100 + 1 + REPORT_OVERHEAD_BYTES
    entries = [_entry(i, 100) for i in range(1, 8)]
    batches = batch_entries(entries, max_bytes=cost * 3)
    assert [[e.seq for e in b] for b in batches] == [[1, 2, 3], [4, 5, 6], [7]]


def test_an_oversized_entry_travels_alone() -> None:
    batches = batch_entries([_entry(1, 10), _entry(2, 5000), _entry(3, 10)], max_bytes=1000)
    assert [[e.seq for e in b] for b in batches] == [[1], [2], [3]]
