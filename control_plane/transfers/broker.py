"""The transfer broker: authorize a request for a stored result's bytes, ask an agent of the
producing environment to serve it, and relay its chunks to the requester (decision 0020).

Consumer call (an agent's or a client's ``FetchResult``) -> ``fetch_for_agent`` /
``fetch_for_client``: check and record the transfer (``usecases.transfers``), open a pipe,
send ``ServeResult`` on the producer's stream, then yield what the producer pushes.
Producer call (``PushResult``) -> ``push``: attach to that pipe (only the agent that was asked,
only once) and feed it, checking each chunk: at most ``MAX_CHUNK_BYTES``, contiguous offsets,
never past the object's size; the first chunk names the object's size and sha256, which must
be the recorded ones. The relay hashes the bytes of a transfer from offset 0 and withholds
the last chunk unless the digest matches (a resumed transfer is checked by its receiver).

The consumer's call owns the transfer: when it ends, the row becomes COMPLETED (every byte
was handed to the consumer's call) or FAILED with why, with its audit record.

Presigned URLs (decision 0020): a consumer that accepts one says so; the producer is asked
with ``presigned_url_allowed`` and, when its store opted in, pushes one chunk carrying a URL
instead of the bytes. That chunk must be the first and only one, describe the recorded object
from the requested offset, carry no bytes and a bounded URL and lifetime. It is handed to the
consumer and the transfer is COMPLETED with method ``presigned`` and the bytes from the offset
to the end (they leave the environment, only not through us). The URL is in no row, record,
log line or error.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from control_plane.scheduler.registry import AgentRegistry, AgentSession, ServeResultOut
from control_plane.store.db import Store
from control_plane.store.ids import new_id
from control_plane.transfers.chunks import (
    Chunk,
    check_chunk,
    check_offset,
    check_url_chunk,
)
from control_plane.transfers.relay import (
    DIGEST_MISMATCH,
    END,
    Pipe,
    PipeClosed,
    PipeSpec,
    PresignedUrl,
    Relay,
    ResultCorrupt,
)
from control_plane.usecases.transfers import (
    PRESIGNED,
    RELAY,
    AgentFetch,
    Refused,
    TransferPlan,
    begin_agent_transfer,
    begin_client_transfer,
    fail_interrupted_transfers,
    finish_transfer,
    stored_result,
)
from meridian.core.errors import ConflictError, MeridianError, ValidationError
from meridian.core.resultref import ResultRef

__all__ = ["Chunk", "PresignableServe", "TransferBroker", "TransferUnavailable"]

log = logging.getLogger(__name__)
# Hashing a chunk this large moves off the event loop (hashlib releases the GIL).
HASH_OFF_LOOP_BYTES = 64 * 1024


class TransferUnavailable(MeridianError):
    """The transfer cannot go on now (no agent to serve it, a cut call, a timeout); asking
    again later may work."""


@dataclass(frozen=True)
class PresignableServe(ServeResultOut):
    """``ServeResultOut``, and whether the consumer accepts a presigned URL instead."""

    presigned_url_allowed: bool = False


class TransferBroker:
    """Relays stored results between agents (and to clients) through ``relay``."""

    def __init__(
        self,
        store: Store,
        registry: AgentRegistry,
        relay: Relay,
        max_silence_s: Callable[[], float] = lambda: float("inf"),
    ) -> None:
        self._store = store
        self._registry = registry
        self._relay = relay
        self._max_silence_s = max_silence_s
        self._started_at = store.clock()
        self._endings: set[asyncio.Task[None]] = set()

    # ---- consumers --------------------------------------------------------------------

    async def fetch_for_agent(
        self,
        agent_id: str,
        attempt_id: str,
        fencing_token: int,
        ref_json: str,
        offset: int,
        *,
        accept_presigned_url: bool = False,
    ) -> AsyncIterator[Chunk]:
        """The bytes of ``ref_json`` from ``offset`` on, for an input of ``attempt_id`` (or,
        when the consumer accepts one and the producer offers it, a presigned URL). Everything
        before the producer is asked (authorization, residency, the row) is the same."""
        ref = ResultRef.from_json(ref_json)
        check_offset(offset, ref)
        with self._relay.consumer_slot(agent_id):
            await self._sweep_once()
            producer = self._producer(ref)
            fetch = AgentFetch(agent_id, attempt_id, fencing_token, ref, offset)
            plan = await self._store.transact(
                begin_agent_transfer,
                fetch,
                new_id(),
                producer.agent.agent_id if producer else None,
            )
            async for chunk in self._serve(plan, producer, accept_presigned_url):
                yield chunk

    async def fetch_for_client(
        self, principal: str, run_id: str, step_key: str, offset: int
    ) -> AsyncIterator[Chunk]:
        """The bytes of step ``step_key``'s stored result in run ``run_id`` (visible to the
        caller: checked by the API layer) for a client download."""
        with self._relay.consumer_slot(principal):
            await self._sweep_once()
            ref = await self._store.run(stored_result, run_id, step_key)
            producer = self._producer(ref)
            plan = await self._store.transact(
                begin_client_transfer,
                run_id,
                step_key,
                offset,
                new_id(),
                producer.agent.agent_id if producer else None,
            )
            async for chunk in self._serve(plan, producer):
                yield chunk

    def _producer(self, ref: ResultRef) -> AgentSession | None:
        """A connected, recently heard agent of the producing environment that has the store,
        with room for another transfer: the least busy one, not draining first."""
        silence = self._max_silence_s()
        slots = self._relay.slots
        candidates = [
            s
            for s in self._registry.sessions()
            if s.agent.environment == ref.environment
            and ref.store in s.result_stores
            and s.silent_for() <= silence
            and slots.free(s.agent.agent_id)
        ]
        if not candidates:
            return None
        return min(candidates, key=lambda s: (s.draining, slots.in_use(s.agent.agent_id)))

    async def _serve(
        self, plan: TransferPlan | Refused, producer: AgentSession | None, url_ok: bool = False
    ) -> AsyncIterator[Chunk]:
        if isinstance(plan, Refused):
            raise plan.error
        if producer is None or plan.producer_agent_id is None:
            raise TransferUnavailable(
                f"no connected agent of environment {plan.ref.environment!r} has result store "
                f"{plan.ref.store!r} (or each has its {self._relay.slots.per_agent} transfers "
                "in flight); the result can move once one is, so try again"
            )
        ref = plan.ref
        spec = PipeSpec(
            plan.transfer_id, plan.producer_agent_id, ref.size, ref.sha256, plan.offset, url_ok
        )
        sent, method = 0, RELAY
        failure: MeridianError | None = None
        try:
            with self._relay.open(spec) as pipe:
                producer.send(
                    PresignableServe(plan.transfer_id, ref.to_json(), plan.offset, url_ok)
                )
                async for chunk in self._relayed(pipe, producer.agent.name):
                    if chunk.presigned_url:  # the rest of the object leaves by the URL
                        sent, method = ref.size - plan.offset, PRESIGNED
                    sent += len(chunk.data)  # handed to the consumer's call: it crossed
                    yield chunk
                pipe.complete()
        except PipeClosed as exc:
            failure = _consumer_failure(exc)
        except BaseException:
            # The consumer's call was cancelled under us (or the relay broke): record the end
            # in a task of its own, which the cancellation cannot stop.
            ending = asyncio.ensure_future(
                self._store.transact(
                    finish_transfer,
                    plan.transfer_id,
                    sent,
                    "the consumer's call ended before the transfer did",
                    method,
                )
            )
            self._endings.add(ending)
            ending.add_done_callback(self._ended)
            raise
        # The row is final before the consumer's call ends.
        await self._store.transact(
            finish_transfer, plan.transfer_id, sent, str(failure) if failure else "", method
        )
        if failure is not None:
            raise failure

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._endings.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("could not record the end of a transfer: %r", task.exception())

    async def _relayed(self, pipe: Pipe, producer_name: str) -> AsyncIterator[Chunk]:
        spec = pipe.spec
        position, first = spec.offset, True
        while True:
            waiting_for = (
                f"agent {producer_name} did not start sending the result"
                if first
                else f"agent {producer_name} sent nothing more"
            )
            timeout = self._relay.start_timeout_s if first else self._relay.gap_timeout_s
            item = await pipe.get(timeout, waiting_for)
            if item is END:
                break
            if isinstance(item, PresignedUrl):  # the producer's push checked it is alone
                yield Chunk(position, b"", spec.transfer_id, spec.size, spec.sha256,
                            presigned_url=item.url, presigned_url_ttl_s=item.ttl_s)  # fmt: skip
                first = False
                continue
            assert isinstance(item, bytes)
            yield _chunk(spec, position, item, first)
            position += len(item)
            first = False
        if first:  # nothing to send (an empty object, or resumed at its end): say what it is
            yield _chunk(spec, position, b"", True)

    # ---- producers --------------------------------------------------------------------

    async def push(self, agent_id: str, chunks: AsyncIterator[Chunk]) -> None:
        """Feed the transfer the first chunk names with ``chunks`` (an agent's PushResult);
        returns once its consumer got every byte, raises when the transfer failed."""
        first = await self._next(chunks, "the first chunk")
        if first is None:
            raise ValidationError("PushResult sent no chunk; the first must name the transfer")
        pipe = self._relay.attach(first.transfer_id, agent_id)
        if first.error:
            # The producer could not read the object: the consumer learns why, and retrying
            # will not help until someone fixes the store.
            reason = f"the producing agent could not read the result: {first.error[:1000]}"
            pipe.fail(reason, retryable=False, corrupt=first.error.startswith(DIGEST_MISMATCH))
            return
        try:
            if first.presigned_url:
                await self._feed_url(pipe, first, chunks)
            else:
                await self._feed(pipe, first, chunks)
            async with asyncio.timeout(self._relay.gap_timeout_s * (pipe.depth + 1)):
                await pipe.finished.wait()
        except PipeClosed as exc:
            raise TransferUnavailable(exc.reason) from None
        except TimeoutError:
            pipe.fail("the consumer did not take the last chunks in time")
        except BaseException as exc:
            # A bad chunk, a cut call, cancellation: the consumer learns why.
            pipe.fail(
                _push_failure(exc, agent_id),
                retryable=not isinstance(exc, ValidationError),
                corrupt=isinstance(exc, _Corrupt),
            )
            raise
        if pipe.failure is not None:
            raise TransferUnavailable(pipe.failure.reason)

    async def _feed(self, pipe: Pipe, first: Chunk, chunks: AsyncIterator[Chunk]) -> None:
        spec = pipe.spec
        if (first.total_size, first.sha256, first.offset) != (spec.size, spec.sha256, spec.offset):
            raise ValidationError(
                f"the first chunk describes {first.total_size} bytes with sha256 "
                f"{first.sha256[:64]!r} from offset {first.offset}; the transfer is of "
                f"{spec.size} bytes with sha256 {spec.sha256} from offset {spec.offset}"
            )
        digest = hashlib.sha256() if spec.offset == 0 else None
        position, chunk = spec.offset, first
        while True:
            if chunk.error.startswith(DIGEST_MISMATCH):  # its store read found the object bad
                raise _Corrupt(f"the producer failed mid-way: {chunk.error[:1000]}")
            check_chunk(chunk, position, spec.size, first=chunk is first)
            if digest is not None:
                await _hash(digest, chunk.data)
            position += len(chunk.data)
            if position == spec.size and digest is not None and digest.hexdigest() != spec.sha256:
                # The last chunk is withheld: the consumer never gets all of a wrong object.
                raise _Corrupt(
                    f"the bytes sent hash to {digest.hexdigest()}, not the recorded {spec.sha256}"
                )
            if chunk.data:
                await pipe.put(chunk.data, self._relay.gap_timeout_s)
            following = await self._next(chunks, "the next chunk")
            if following is None:
                break
            chunk = following
        if position < spec.size:
            # Its call ended early: the producing agent was stopped or lost its connection
            # (a SIGKILL ends the stream so). Retryable: the consumer resumes from its offset.
            raise _ProducerStopped(position, spec.size)
        await pipe.put(END, self._relay.gap_timeout_s)

    async def _feed_url(self, pipe: Pipe, first: Chunk, chunks: AsyncIterator[Chunk]) -> None:
        check_url_chunk(first, pipe.spec)
        if await self._next(chunks, "the end of the stream") is not None:
            raise ValidationError("a presigned URL must be the only chunk of its transfer")
        url = PresignedUrl(first.presigned_url, first.presigned_url_ttl_s)
        await pipe.put(url, self._relay.gap_timeout_s)
        await pipe.put(END, self._relay.gap_timeout_s)

    async def _next(self, chunks: AsyncIterator[Chunk], what: str) -> Chunk | None:
        try:
            async with asyncio.timeout(self._relay.gap_timeout_s):
                return await anext(chunks)
        except StopAsyncIteration:
            return None
        except TimeoutError:
            raise TransferUnavailable(
                f"the producer sent nothing for {self._relay.gap_timeout_s:g} s "
                f"(waiting for {what})"
            ) from None

    # ---- housekeeping -----------------------------------------------------------------

    async def _sweep_once(self) -> None:
        """Transfers a previous control plane left RUNNING end as FAILED (once a process)."""
        if self._relay.swept:
            return
        self._relay.swept = True
        ended = await self._store.transact(
            fail_interrupted_transfers, self._started_at, self._relay.open_transfers()
        )
        if ended:
            log.warning("%d transfers were cut by a control plane restart: marked FAILED", ended)


def _chunk(spec: PipeSpec, offset: int, data: bytes, first: bool) -> Chunk:
    if not first:
        return Chunk(offset, data)
    return Chunk(offset, data, spec.transfer_id, spec.size, spec.sha256)


async def _hash(digest: hashlib._Hash, data: bytes) -> None:
    if len(data) >= HASH_OFF_LOOP_BYTES:
        await asyncio.to_thread(digest.update, data)
    else:
        digest.update(data)


class _Corrupt(ValidationError):
    """The producer's bytes do not match the recorded digest: the stored object is corrupt."""


class _ProducerStopped(TransferUnavailable):
    """The producer's call ended before the last byte."""

    def __init__(self, position: int, size: int) -> None:
        super().__init__(f"after {position} of {size} bytes")


def _consumer_failure(exc: PipeClosed) -> MeridianError:
    if exc.corrupt:
        return ResultCorrupt(f"the stored object is corrupt: {exc.reason}")
    return TransferUnavailable(exc.reason) if exc.retryable else ConflictError(exc.reason)


def _push_failure(exc: BaseException, agent_id: str) -> str:
    if isinstance(exc, _ProducerStopped):
        return f"the producing agent {agent_id} disconnected or stopped {exc}"
    if isinstance(exc, ValidationError | TransferUnavailable):
        return f"agent {agent_id} pushed a bad stream: {exc}"
    if isinstance(exc, asyncio.CancelledError):
        return f"the producing agent {agent_id} disconnected (its PushResult call was cut)"
    return f"agent {agent_id}'s PushResult call failed: {exc!r}"
