"""The in-memory half of result transfers: one bounded pipe per transfer, and the limits.

A transfer joins two calls that both came from outside: the consumer's ``FetchResult`` (the
pipe's reader) and the producer's ``PushResult`` (its writer). The pipe is an
``asyncio.Queue`` of at most ``depth`` chunks of at most ``MAX_CHUNK_BYTES``, so the control
plane never holds more than that per transfer: a slow reader leaves the writer's ``put``
waiting, the producer's handler stops reading its call, and HTTP/2 flow control makes the
producing agent wait in turn. Either side failing (a timeout, a cut call, a bad chunk) closes
the pipe with a reason that the other side raises. Instead of bytes, a pipe may carry one
``PresignedUrl`` (the producing site's store signed a URL the consumer downloads from).

Pure asyncio: no database, no gRPC. ``broker`` puts it to work.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from meridian.core.errors import ConflictError, LimitExceeded, NotFound, PermissionDenied

MAX_CHUNK_BYTES = 1024 * 1024
PIPE_DEPTH = 4
# The producing agent must send its first chunk this soon after it was asked to serve...
START_TIMEOUT_S = 30.0
# ... and then never pause longer than this between chunks (nor may the consumer stop reading
# for longer): a stalled transfer fails instead of holding its slots for ever.
GAP_TIMEOUT_S = 60.0
MAX_TRANSFERS_PER_AGENT = 8
MAX_TRANSFERS = 64
# A presigned URL the relay hands on: bounded in length and lifetime (the agents' own bounds).
MAX_URL_LENGTH = 8 * 1024
MAX_URL_TTL_S = 3600


class ResultCorrupt(ConflictError):
    """The stored object's bytes do not match its recorded digest (DATA_LOSS at the edge): the
    consumer fails permanently instead of relaying the whole object again at every retry."""


# How the producing agent names the error of a store read whose digest did not match
# (``agent.transfers._why``: the exception's type name first).
DIGEST_MISMATCH = "DigestMismatch:"


class PipeClosed(Exception):
    """The other side of the transfer gave up; ``reason`` says why. ``retryable``: a cut or a
    timeout (the consumer may try again); otherwise the object itself could not be served.
    ``corrupt``: its bytes do not match the recorded digest."""

    def __init__(self, reason: str, *, retryable: bool = True, corrupt: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable and not corrupt
        self.corrupt = corrupt


class _End:
    """The producer sent every byte (and the relay checked them)."""


class _Failed:
    """The pipe was closed; the reason is on the pipe."""


@dataclass(frozen=True)
class PresignedUrl:
    """In place of the bytes: a read-only URL of the object, valid for ``ttl_s``. A bearer
    credential: out of every repr, log line, error and row."""

    url: str = field(repr=False)
    ttl_s: int


END = _End()
_FAILED = _Failed()
Item = bytes | PresignedUrl | _End | _Failed


@dataclass(frozen=True)
class PipeSpec:
    """What one transfer must carry: the object's size and digest, from ``offset`` on."""

    transfer_id: str
    producer_agent_id: str
    size: int
    sha256: str
    offset: int
    # The consumer accepts a presigned URL in place of the bytes.
    presigned_url_allowed: bool = False


class Pipe:
    """One transfer's bounded channel from its producer's call to its consumer's call.

    ``_room`` counts the free places for chunks: the queue itself is unbounded only so that
    closing the pipe can always post its marker, however full the pipe is.
    """

    def __init__(self, spec: PipeSpec, depth: int = PIPE_DEPTH) -> None:
        if depth < 1:
            raise ValueError("a pipe holds at least one chunk")
        self.spec = spec
        self.depth = depth
        self._room = asyncio.Semaphore(depth)
        self._queue: asyncio.Queue[Item] = asyncio.Queue()
        self.attached = False  # a producer call took this transfer (at most one ever does)
        self.failure: PipeClosed | None = None
        self.completed = False  # the consumer got every byte (see ``complete``)
        self.finished = asyncio.Event()  # the consumer side ended, well or not
        self.queued = 0  # chunks waiting for the consumer (at most ``depth``)

    async def put(self, item: bytes | PresignedUrl | _End, timeout_s: float) -> None:
        """Hand ``item`` to the consumer, waiting while the pipe is full (backpressure)."""
        self._raise_if_failed()
        if isinstance(item, bytes):
            try:
                async with asyncio.timeout(timeout_s):
                    await self._room.acquire()
            except TimeoutError:
                self.fail(
                    f"the consumer read nothing for {timeout_s:g} s; the transfer was abandoned"
                )
            self._raise_if_failed()
            self.queued += 1
        self._queue.put_nowait(item)

    async def get(self, timeout_s: float, waiting_for: str) -> bytes | PresignedUrl | _End:
        """The next chunk, or ``END``; raises ``PipeClosed`` when the producer side failed or
        nothing came within ``timeout_s`` (``waiting_for`` says what, for the message)."""
        self._raise_if_failed()
        try:
            async with asyncio.timeout(timeout_s):
                item = await self._queue.get()
        except TimeoutError:
            self.fail(f"{waiting_for} within {timeout_s:g} s")
            item = _FAILED
        if isinstance(item, _Failed):
            self._raise_if_failed()
            raise AssertionError("a failed pipe has a failure")
        if isinstance(item, bytes):
            self.queued -= 1
            self._room.release()
        return item

    def complete(self) -> None:
        """The consumer side ended well: every byte reached the consumer's call."""
        if self.failure is None:
            self.completed = True

    def fail(self, reason: str, *, retryable: bool = True, corrupt: bool = False) -> None:
        """Close the pipe (idempotent: the first reason stays) and wake both sides."""
        if self.failure is not None or self.completed:
            return
        self.failure = PipeClosed(reason, retryable=retryable, corrupt=corrupt)
        # Free what is queued at once; the marker wakes a reader, the release a writer.
        while not self._queue.empty():
            self._queue.get_nowait()
        self.queued = 0
        self._queue.put_nowait(_FAILED)
        self._room.release()

    def _raise_if_failed(self) -> None:
        if self.failure is not None:
            raise self.failure


class TransferSlots:
    """At most ``per_agent`` transfers per agent (serving and fetching together) and
    ``total`` in all; a client download counts under its principal. Event-loop only."""

    def __init__(self, per_agent: int = MAX_TRANSFERS_PER_AGENT, total: int = MAX_TRANSFERS):
        if per_agent < 1 or total < 1:
            raise ValueError("transfer limits must be at least 1")
        self.per_agent = per_agent
        self.total = total
        self._counts: dict[str, int] = {}
        self._in_flight = 0

    def free(self, party: str) -> bool:
        return self._counts.get(party, 0) < self.per_agent

    def in_use(self, party: str) -> int:
        return self._counts.get(party, 0)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def acquire(self, consumer: str) -> None:
        """Count a new transfer for ``consumer`` (raises ``LimitExceeded`` when full)."""
        if self._in_flight >= self.total:
            raise LimitExceeded(
                f"the control plane relays {self.total} result transfers at once already (the "
                "most it may); retry in a moment"
            )
        if not self.free(consumer):
            raise LimitExceeded(
                f"{consumer} has {self.per_agent} result transfers in flight already (the most "
                "one agent or client may); retry when one finishes"
            )
        self._in_flight += 1
        self._add(consumer, 1)

    def release(self, consumer: str) -> None:
        self._in_flight -= 1
        self._add(consumer, -1)

    def add_producer(self, producer: str) -> None:
        self._add(producer, 1)

    def remove_producer(self, producer: str) -> None:
        self._add(producer, -1)

    def _add(self, party: str, delta: int) -> None:
        left = self._counts.get(party, 0) + delta
        if left > 0:
            self._counts[party] = left
        else:
            self._counts.pop(party, None)


class Relay:
    """The open transfers of this control plane, by id, and their limits."""

    def __init__(
        self,
        *,
        start_timeout_s: float = START_TIMEOUT_S,
        gap_timeout_s: float = GAP_TIMEOUT_S,
        per_agent: int = MAX_TRANSFERS_PER_AGENT,
        total: int = MAX_TRANSFERS,
        depth: int = PIPE_DEPTH,
    ) -> None:
        self.start_timeout_s = start_timeout_s
        self.gap_timeout_s = gap_timeout_s
        self.depth = depth
        self.slots = TransferSlots(per_agent, total)
        self._pipes: dict[str, Pipe] = {}
        # Set once the transfers a previous process left RUNNING were marked failed.
        self.swept = False

    @contextlib.contextmanager
    def consumer_slot(self, consumer: str) -> Iterator[None]:
        self.slots.acquire(consumer)
        try:
            yield
        finally:
            self.slots.release(consumer)

    @contextlib.contextmanager
    def open(self, spec: PipeSpec) -> Iterator[Pipe]:
        """Register a pipe for the duration of the consumer's call."""
        if spec.transfer_id in self._pipes:
            raise ConflictError(f"transfer {spec.transfer_id} is open already")
        pipe = Pipe(spec, self.depth)
        self._pipes[spec.transfer_id] = pipe
        self.slots.add_producer(spec.producer_agent_id)
        try:
            yield pipe
        finally:
            pipe.fail("the consumer's call ended before the transfer did")  # no-op if completed
            pipe.finished.set()
            del self._pipes[spec.transfer_id]
            self.slots.remove_producer(spec.producer_agent_id)

    def attach(self, transfer_id: str, agent_id: str) -> Pipe:
        """The pipe a producer's ``PushResult`` writes to: only the agent it was asked of,
        and only once."""
        pipe = self._pipes.get(transfer_id)
        if pipe is None:
            raise NotFound(
                f"transfer {transfer_id[:64]!r} is not waiting for bytes (unknown, finished or "
                "abandoned)"
            )
        if pipe.spec.producer_agent_id != agent_id:
            raise PermissionDenied(
                f"transfer {transfer_id} was asked of another agent; this agent may not serve it"
            )
        if pipe.attached:
            raise ConflictError(f"transfer {transfer_id} is being served already")
        pipe.attached = True
        return pipe

    def open_transfers(self) -> frozenset[str]:
        return frozenset(self._pipes)
