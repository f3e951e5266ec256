"""The scheduler's ready queue: every queued attempt, in memory, oldest first.

A scheduling pass used to reload every queued attempt (with its step and run rows) however few
slots were free, so each pass cost O(N) rows and a fan-out of N steps O(N²). The dispatcher
keeps this queue instead: rebuilt from the store at start and at every sweep (another writer
may have queued work), fed by the ``queued`` effects of committed transactions, and read by the
pass, which then loads from the store only the attempts it assigns (at most the free slots)
and what it explains (bounded per pass).

It is pure bookkeeping with no I/O. It may be stale in one direction only: an entry whose
attempt has meanwhile been assigned, cancelled or failed elsewhere. The pass re-checks the
stored state of what it assigns and drops such entries (``discard``).

An entry of a step whose inputs name stored results carries their residency rules (as they
were when it was queued); it is grouped apart from entries without them, since it may wait for
another reason. So is one whose step names a result store (``StepSpec.result_store``): it
waits for an agent that has it.
"""

from __future__ import annotations

import datetime as dt
import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from control_plane.orchestration.residency_check import NO_RESIDENCY, Residency, describe

# (run, target, provider, residency, result store): the attempts a waiting reason is recorded
# for, once per reason; residency is ``residency_check.describe``'s text, the store the one the
# step names ("" for most steps).
GroupKey = tuple[str, str, str, str, str]
# (run, target, provider, residency, result store, reason) of an ``attempt.waiting`` event
# already recorded.
ExplainedKey = tuple[str, str, str, str, str, str]


@dataclass(frozen=True)
class ReadyEntry:
    """A queued attempt, as much of it as planning and explaining need."""

    attempt_id: str
    flow_run_id: str
    step_run_id: str
    target: str  # the step's selector text
    provider: str
    queued_at: dt.datetime
    not_before: dt.datetime
    deadline: dt.datetime | None
    # The residency rules of the step's referenced inputs, when it was queued.
    residency: Residency = NO_RESIDENCY
    # Named concurrency limits the step takes (``StepSpec.concurrency``; none for most).
    limits: tuple[str, ...] = ()
    # The result store the step names ("" for most: the environment's default, any agent).
    result_store: str = ""

    @property
    def group(self) -> GroupKey:
        rules = describe(self.residency) if self.residency else ""
        return (self.flow_run_id, self.target, self.provider, rules, self.result_store)


class ReadyQueue:
    def __init__(self, entries: Iterable[ReadyEntry] = ()) -> None:
        self._entries: dict[str, ReadyEntry] = {}
        # Per group, its entries oldest first (a dict keeps insertion order).
        self._groups: dict[GroupKey, dict[str, ReadyEntry]] = {}
        self._starts: list[tuple[dt.datetime, str]] = []  # not_before, lazily pruned heap
        self._deadlines: list[tuple[dt.datetime, str]] = []
        # Waiting reasons already recorded, and the runs whose stored ones were read.
        self.explained: set[ExplainedKey] = set()
        self.explained_runs: set[str] = set()
        self.add(sorted(entries, key=lambda e: e.queued_at))

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, attempt_id: object) -> bool:
        return attempt_id in self._entries

    def get(self, attempt_id: str) -> ReadyEntry | None:
        return self._entries.get(attempt_id)

    def add(self, entries: Iterable[ReadyEntry]) -> None:
        """Queue entries (newly queued attempts come in queue order)."""
        for entry in entries:
            if entry.attempt_id in self._entries:
                continue
            self._entries[entry.attempt_id] = entry
            self._groups.setdefault(entry.group, {})[entry.attempt_id] = entry
            heapq.heappush(self._starts, (entry.not_before, entry.attempt_id))
            if entry.deadline is not None:
                heapq.heappush(self._deadlines, (entry.deadline, entry.attempt_id))

    def discard(self, attempt_ids: Iterable[str]) -> None:
        """Forget attempts that are no longer queued (heaps are pruned lazily)."""
        for attempt_id in attempt_ids:
            entry = self._entries.pop(attempt_id, None)
            if entry is None:
                continue
            group = self._groups[entry.group]
            del group[attempt_id]
            if not group:
                del self._groups[entry.group]

    def replace(self, entries: Iterable[ReadyEntry]) -> None:
        """Make the queue exactly ``entries`` (a rebuild from the store), keeping what is
        already known about recorded waiting reasons."""
        fresh = {e.attempt_id: e for e in entries}
        self.discard([a for a in self._entries if a not in fresh])
        self.add(sorted((e for e in fresh.values() if e.attempt_id not in self), key=_age))

    def due(self, now: dt.datetime) -> Iterator[ReadyEntry]:
        """Entries that may start now, oldest first."""
        return (e for e in self._entries.values() if e.not_before <= now)

    def groups(self, now: dt.datetime) -> Iterator[tuple[GroupKey, ReadyEntry, int]]:
        """Each group whose oldest entry may start now: its key, that entry, its size."""
        for key, members in self._groups.items():
            first = next(iter(members.values()))
            if first.not_before <= now:
                yield key, first, len(members)

    def due_needs(self, now: dt.datetime) -> set[tuple[str, str]]:
        """(target, provider) of every group whose oldest entry may start now: what queued
        work waits for, one pair per distinct need (cheap to test slots against)."""
        return {(key[1], key[2]) for key, _, _ in self.groups(now)}

    def expired(self, now: dt.datetime) -> bool:
        """Whether some entry's schedule deadline has passed."""
        due = self._head(self._deadlines)
        return due is not None and due <= now

    def pop_expired(self, now: dt.datetime, limit: int = 1000) -> list[str]:
        """Take out up to ``limit`` entries whose schedule deadline has passed (the caller
        fails them, or finds they had already left the queue)."""
        ids: list[str] = []
        while len(ids) < limit and (due := self._head(self._deadlines)) is not None:
            if due > now:
                break
            ids.append(heapq.heappop(self._deadlines)[1])
        self.discard(ids)
        return ids

    def next_timer(self, now: dt.datetime) -> dt.datetime | None:
        """When the next retry delay or schedule deadline falls due (None: none)."""
        while self._starts and (
            self._starts[0][0] <= now or self._starts[0][1] not in self._entries
        ):
            heapq.heappop(self._starts)
        starts = self._starts[0][0] if self._starts else None
        return min((t for t in (starts, self._head(self._deadlines)) if t), default=None)

    def _head(self, heap: list[tuple[dt.datetime, str]]) -> dt.datetime | None:
        while heap and heap[0][1] not in self._entries:
            heapq.heappop(heap)
        return heap[0][0] if heap else None


def _age(entry: ReadyEntry) -> dt.datetime:
    return entry.queued_at
