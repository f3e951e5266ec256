"""Result-store housekeeping, the pure part: the frames the control plane sends agents to list
and delete stored objects, what comes back, and the decisions on it (which listed objects are
orphans, how objects are split into frames, which deletions failed).

Pure: no session, no clock, no I/O. The loop that sends these frames is
``control_plane.scheduler.housekeeping``; the rows it keeps are ``usecases.cleanup``'s.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

# One frame of a DeleteResults request holds at most this many objects, and one listing page
# (the agent's side) at most MAX_LISTING_PAGE.
MAX_DELETE_BATCH = 500
MAX_LISTING_PAGE = 1000
# What one object costs in a frame beyond its URI and store name (tags, size, time).
OBJECT_OVERHEAD_BYTES = 32
MAX_URI_LENGTH = 2048
MAX_STORE_NAME = 63
# Error lines kept per store in an answer (an S3 outage fails every object the same way).
MAX_ERRORS_PER_STORE = 20
MAX_ERROR_LINE = 500
# A sweep keeps at most this many orphans to delete; the rest are counted and left for the
# next sweep (the control plane never holds an unbounded listing).
MAX_ORPHANS_PER_SWEEP = 50_000


@dataclass(frozen=True)
class StoredObjectValue:
    """An object in a site's result store, as an agent lists it (``modified_ms``: Unix ms)."""

    store: str
    uri: str
    size: int = 0
    modified_ms: int = 0


@dataclass(frozen=True)
class SweepResultsOut:
    """Ask an agent to list its stores' run objects older than ``older_than_s``."""

    sweep_id: str
    older_than_s: float


@dataclass(frozen=True)
class DeleteResultsOut:
    """Ask an agent to delete these objects; it answers with the same ``request_id``."""

    request_id: str
    objects: tuple[StoredObjectValue, ...]


@dataclass(frozen=True)
class ResultListingIn:
    """One page of an agent's answer to a sweep; ``error`` set (with ``done``) ends it."""

    sweep_id: str
    objects: tuple[StoredObjectValue, ...]
    done: bool
    error: str = ""


@dataclass(frozen=True)
class ResultsDeletedIn:
    """An agent's answer to DeleteResults: what it deleted and one line per failure, each
    ``"<uri>: <why>"`` (a URI holds no whitespace, so the first ``": "`` ends it)."""

    request_id: str
    count: int
    bytes: int
    errors: tuple[str, ...] = ()


@dataclass
class StoreTally:
    """What one sweep found in one store (the control plane's answer to CollectResults)."""

    environment: str
    store: str
    objects: int = 0
    orphans: int = 0
    orphan_bytes: int = 0
    deleted: int = 0
    errors: list[str] = field(default_factory=list)

    def error(self, line: str) -> None:
        if len(self.errors) < MAX_ERRORS_PER_STORE:
            self.errors.append(line[:MAX_ERROR_LINE])
        elif len(self.errors) == MAX_ERRORS_PER_STORE:
            self.errors.append("... more errors not shown")


def uri_digest(uri: str) -> int:
    """A 64-bit digest of a URI, for the set of referenced URIs a sweep compares against.

    A collision can only make an orphan look referenced (it is kept, never a referenced object
    deleted), and 64 bits make even that vanishingly rare, at an eighth of a URI's memory.
    """
    return int.from_bytes(hashlib.blake2b(uri.encode(), digest_size=8).digest(), "big")


def run_id_of(uri: str) -> str | None:
    """The run whose attempt wrote the object at ``uri``, from its key's shape
    ``.../runs/RUN/STEP/ATTEMPT/NAME`` (``agent.results.attempt_key``); None for another shape.

    The step key is one encoded segment, so the run id is always the fourth segment from the
    end. Run ids are UUIDs, which the key encoding leaves unchanged.
    """
    parts = uri.split("/")
    if len(parts) < 5 or parts[-5] != "runs":
        return None
    return parts[-4] or None


def is_orphan(
    obj: StoredObjectValue, referenced: Collection[int], live_runs: Collection[str]
) -> bool:
    """No step run refers to the object, and no attempt of its run is still live (its
    upload may have committed before the report naming it arrives)."""
    if uri_digest(obj.uri) in referenced:
        return False
    run_id = run_id_of(obj.uri)
    return run_id is None or run_id not in live_runs


def object_cost(obj: StoredObjectValue) -> int:
    return len(obj.uri) + len(obj.store) + OBJECT_OVERHEAD_BYTES


def delete_batches(
    objects: Iterable[StoredObjectValue],
    *,
    max_objects: int = MAX_DELETE_BATCH,
    max_bytes: int,
) -> Iterator[tuple[StoredObjectValue, ...]]:
    """Split ``objects`` (in order) into frames of at most ``max_objects`` objects and about
    ``max_bytes`` bytes each (one object larger than that goes alone)."""
    batch: list[StoredObjectValue] = []
    size = 0
    for obj in objects:
        cost = object_cost(obj)
        if batch and (len(batch) >= max_objects or size + cost > max_bytes):
            yield tuple(batch)
            batch, size = [], 0
        batch.append(obj)
        size += cost
    if batch:
        yield tuple(batch)


def failed_uris(errors: Sequence[str]) -> dict[str, str]:
    """The URIs an answer's error lines name, with why; lines naming no URI are skipped."""
    failed: dict[str, str] = {}
    for line in errors:
        uri, sep, why = line.partition(": ")
        if sep and uri and not any(c.isspace() for c in uri):
            failed[uri] = why[:MAX_ERROR_LINE]
    return failed


def store_errors(error: str) -> dict[str, str]:
    """A listing's ``error``: one line per failed store, ``"<store>: <why>"``; a line naming
    no store is filed under ``""`` (the whole environment)."""
    found: dict[str, str] = {}
    for line in error.splitlines():
        name, sep, why = line.partition(": ")
        if sep and name and len(name) <= MAX_STORE_NAME and " " not in name:
            found[name] = why[:MAX_ERROR_LINE]
        elif line.strip():
            found[""] = line[:MAX_ERROR_LINE]
    return found


def listing_problem(page: ResultListingIn) -> str | None:
    """Why a listing page breaks the protocol's bounds, or None."""
    if len(page.objects) > MAX_LISTING_PAGE:
        return f"a listing page holds more than {MAX_LISTING_PAGE} objects"
    for obj in page.objects:
        if not obj.uri or len(obj.uri) > MAX_URI_LENGTH or any(c.isspace() for c in obj.uri):
            return "a listed object has no URI, a URI with whitespace or one over 2048 characters"
        if not obj.store or len(obj.store) > MAX_STORE_NAME:
            return "a listed object names no store or a store name over 63 characters"
    return None
