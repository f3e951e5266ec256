"""The agent's side of result transfers between environments (decision 0020).

Both directions are calls this agent makes to the control plane, which relays the bytes:

- **consumer** (``ResultFetcher``): an input of one of our attempts lives in another
  environment. ``FetchResult`` streams it into ``<dest>.part``; a cut stream is resumed with
  ``offset`` = the bytes already written (a bounded number of times in a row without progress,
  with backoff), and the file is renamed to ``dest`` only once its size and sha256 match the
  reference. A ``.part`` an earlier try of the same fetch left is hashed again and resumed,
  so no run of crashes and cuts ever leaves a torn or wrong ``dest``; one a killed agent left
  goes with its attempt's work dir at the next start (``agent.workdirs``), since the control
  plane retries that attempt as a new one. When the agent accepts presigned URLs
  (``[transfers]``, on by default) it says so; a producing site that opted in answers with one
  URL instead of the bytes, which ``agent.presigned`` downloads into the same ``.part`` (from
  the hosts its ``presigned_url_hosts`` allows only, on its own threads, at a minimum pace).
  Any failure of the URL (refused, expired, unreachable, too slow, wrong bytes) falls back to
  the relay.
- **producer** (``ResultServer``): the control plane asks (``ServeResult``) for an object of
  one of our stores. ``PushResult`` streams it from ``offset`` on, read with the store's own
  digest-checking reader off the event loop, one chunk at a time: while the relay is full the
  call's flow control holds the next read back. An object that cannot be read is answered with
  one chunk carrying the error. When the consumer accepts it and the store has
  ``presign_transfers``, the answer is one chunk carrying a presigned URL instead (the bytes
  are streamed after all if presigning fails).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

import grpc

from agent import convert, presigned
from agent.actions import ServeResultAction
from agent.partfile import Progress
from agent.results._base import ResultLocation, ResultStore
from agent.results._errors import DigestMismatch
from agent.results.config import TransferSettings
from agent.results.inputs import InputError
from agent.results.registry import locate
from meridian.core.errors import ValidationError
from meridian.core.resultref import ResultRef

log = logging.getLogger("meridian.agent.transfers")

CHUNK_BYTES = 1024 * 1024  # the relay's largest chunk
# A transfer that made no progress this many times in a row fails the input (transient).
# The waits (2, 4, 8, 16, 30 s: about a minute) outlast a producing agent's restart.
MAX_RETRIES = 5
RETRY_BACKOFF_S = 2.0
MAX_RETRY_BACKOFF_S = 30.0
# No chunk for this long: the stream is given up and resumed (the relay's own gap is 60 s).
IDLE_TIMEOUT_S = 120.0
# Pushes this agent runs at once (the control plane asks no more of one agent).
MAX_SERVING = 8
# Fetches at once: the control plane counts serving and fetching together per agent (8), so
# fetches leave room for serving; more attempts' inputs wait here instead of being refused.
MAX_FETCHING = 4
HASH_OFF_LOOP_BYTES = 64 * 1024

RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    }
)
# The control plane refused the reference itself: retrying the step cannot change that.
REFUSED = frozenset(
    {
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
    }
)


class _Interrupted(Exception):
    """One stream ended early (a cut, a timeout, an answer to retry); resume it."""


@dataclass(frozen=True)
class _Offer:
    """The producer's answer was a presigned URL (a bearer credential: never logged)."""

    url: str = field(repr=False)
    ttl_s: int


class ResultFetcher:
    """Fetches results of other environments for this agent's attempts (see the module
    docstring); ``stub`` is the agent's endpoint (``FetchResult``)."""

    def __init__(
        self,
        stub: Any,
        *,
        max_retries: int = MAX_RETRIES,
        backoff_s: float = RETRY_BACKOFF_S,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        max_fetching: int = MAX_FETCHING,
        settings: TransferSettings | None = None,
    ) -> None:
        self._stub = stub
        self._slots = asyncio.Semaphore(max_fetching)
        self._settings = settings or TransferSettings()
        self._max_retries = max_retries
        self._backoff_s = backoff_s
        self._idle_timeout_s = idle_timeout_s

    async def fetch(self, attempt_id: str, fencing_token: int, ref: ResultRef, dest: Path) -> None:
        """Write the object of ``ref`` to ``dest`` (atomically, digest-checked).

        Raises:
            InputError: permanent when the control plane refused the reference, transient
                when the transfer failed too often without progress.
            DigestMismatch: the bytes did not match even after starting afresh.
            OSError: the local disk failed.
        """
        async with self._slots:
            await self._fetch(attempt_id, fencing_token, ref, dest)

    async def _fetch(self, attempt_id: str, fencing_token: int, ref: ResultRef, dest: Path) -> None:
        part = dest.with_name(dest.name + ".part")
        progress = await asyncio.to_thread(Progress.resume, part, ref.size)
        stalled = 0
        accept_url = self._settings.accept_presigned_urls
        while True:
            before = progress.received
            try:
                if progress.received < ref.size:
                    offer = await self._stream(attempt_id, fencing_token, ref, progress, accept_url)
                    if offer is not None:
                        accept_url = False  # one URL per fetch: after a failure, the relay
                        if not await presigned.download_into(
                            progress,
                            offer.url,
                            ref,
                            hosts=self._settings.presigned_url_hosts,
                            allow_http=self._settings.allow_http_presigned_urls,
                        ):
                            continue  # straight on through the relay
                if progress.received == ref.size:
                    await asyncio.to_thread(progress.commit, ref, dest)
                    return
                problem = f"the stream ended after {progress.received} of {ref.size} bytes"
            except _Interrupted as exc:
                problem = str(exc)
            except DigestMismatch:
                if not progress.unchecked:
                    raise  # the relay checked these bytes: something is badly wrong
                log.warning("the part %s held wrong bytes: fetching anew", part)
                await asyncio.to_thread(progress.restart)
                continue
            stalled = 0 if progress.received > before else stalled + 1
            if stalled > self._max_retries:
                raise InputError(
                    "transient",
                    "meridian.ResultTransferFailed",
                    f"{_where(ref)}: the transfer made no progress {stalled} times in a row "
                    f"({progress.received} of {ref.size} bytes received); last: {problem}",
                )
            delay = min(self._backoff_s * 2 ** max(0, stalled - 1), MAX_RETRY_BACKOFF_S)
            log.info("transfer of %s interrupted (%s); resuming in %.1f s", ref.uri, problem, delay)
            await asyncio.sleep(delay)

    async def _stream(
        self,
        attempt_id: str,
        fencing_token: int,
        ref: ResultRef,
        progress: Progress,
        accept_url: bool,
    ) -> _Offer | None:
        """Relay the bytes into the part, or return the presigned URL the producer offered."""
        request = convert.fetch_result_request(
            attempt_id,
            fencing_token,
            ref.to_json(),
            progress.received,
            accept_presigned_url=accept_url,
        )
        call = self._stub.FetchResult(request)
        out = await asyncio.to_thread(open, progress.part, "ab")
        try:
            return await self._receive(call, ref, progress, out, accept_url)
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code(), exc.details() or ""
            if code == grpc.StatusCode.DATA_LOSS:
                # The stored object is corrupt: a retry would relay the same wrong bytes.
                raise InputError(
                    "permanent",
                    "meridian.ResultDigestMismatch",
                    f"{_where(ref)}: DigestMismatch: {details}",
                ) from None
            if code in REFUSED:
                raise InputError(
                    "permanent",
                    "meridian.ResultTransferRefused",
                    f"{_where(ref)}: the control plane refused the transfer ({code.name}): "
                    f"{details}",
                ) from None
            if code not in RETRYABLE:
                raise InputError(
                    "transient",
                    "meridian.ResultTransferFailed",
                    f"{_where(ref)}: the transfer failed ({code.name}): {details}",
                ) from None
            raise _Interrupted(f"{code.name}: {details}") from None
        except TimeoutError:
            raise _Interrupted(f"no bytes for {self._idle_timeout_s:g} s") from None
        finally:
            call.cancel()
            await asyncio.to_thread(_flush_close, out)

    async def _receive(
        self, call: Any, ref: ResultRef, progress: Progress, out: IO[bytes], accept_url: bool
    ) -> _Offer | None:
        first, offer = True, None
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._idle_timeout_s) as idle:
            async for message in call:
                idle.reschedule(loop.time() + self._idle_timeout_s)
                offset, data, total, sha256 = convert.result_piece_from_proto(message)
                url, ttl_s = convert.presigned_url_from_proto(message)
                if offer is not None or (url and not (accept_url and first and not data)):
                    # A URL only alone, first and asked for (the relay checks this too).
                    raise _Interrupted("the relay sent a presigned URL out of place")
                if first and (total, sha256) != (ref.size, ref.sha256):
                    raise InputError(
                        "permanent",
                        "meridian.ResultTransferRefused",
                        f"{_where(ref)}: the relay sent an object of {total} bytes with sha256 "
                        f"{sha256[:64]!r}, not this reference's",
                    )
                if offset != progress.received or progress.received + len(data) > ref.size:
                    raise _Interrupted(
                        f"the relay sent bytes at offset {offset} (expected "
                        f"{progress.received}, object of {ref.size} bytes)"
                    )
                first = False
                if url:
                    offer = _Offer(url, ttl_s)  # read on: the call must end with no more
                elif data:
                    await _append(out, progress, data)
        return offer


async def _append(out: IO[bytes], progress: Progress, data: bytes) -> None:
    if len(data) >= HASH_OFF_LOOP_BYTES:
        await asyncio.to_thread(progress.append, out, data)
    else:
        progress.append(out, data)


def _flush_close(out: IO[bytes]) -> None:
    with contextlib.suppress(OSError):
        out.flush()
    out.close()


def _where(ref: ResultRef) -> str:
    return f"input result {ref.uri} (store {ref.store!r} of environment {ref.environment!r})"


# ---- producer -----------------------------------------------------------------------------


class ServeError(Exception):
    """This agent cannot serve the requested object (sent to the relay as the chunk's error)."""


class ResultServer:
    """Pushes objects of this site's stores for transfers the control plane relays."""

    def __init__(
        self,
        stub: Any,
        stores: Mapping[str, ResultStore],
        *,
        presigning: Mapping[str, int] | None = None,
        max_serving: int = MAX_SERVING,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        """``presigning``: the stores with ``presign_transfers`` -> URL lifetime in s."""
        self._stub = stub
        self._stores = stores
        self._presigning = dict(presigning or {})
        self._slots = asyncio.Semaphore(max_serving)
        self._chunk_bytes = chunk_bytes
        self._tasks: set[asyncio.Task[None]] = set()

    def handle(self, action: ServeResultAction) -> None:
        """Serve in the background (the caller is the connection's frame handler)."""
        task = asyncio.ensure_future(self.serve(action))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def serve(self, action: ServeResultAction) -> None:
        """Push the object; a failure is logged (the relay tells the consumer)."""
        async with self._slots:
            try:
                await self._stub.PushResult(self._chunks(action))
            except grpc.aio.AioRpcError as exc:
                log.warning(
                    "transfer %s ended with %s: %s",
                    action.transfer_id,
                    exc.code().name,
                    exc.details(),
                )

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _chunks(self, action: ServeResultAction) -> AsyncIterator[Any]:
        transfer_id, offset = action.transfer_id, action.offset
        try:
            ref, store, location = await asyncio.to_thread(self._locate, action)
            url = await self._presign(action, ref, store, location)
            if url:
                yield convert.result_chunk(
                    transfer_id,
                    offset,
                    total_size=ref.size,
                    sha256=ref.sha256,
                    presigned_url=url,
                    presigned_url_ttl_s=self._presigning[ref.store],
                )
                return
            reader = await asyncio.to_thread(store.open, location, self._chunk_bytes)
        except Exception as exc:  # any reason is the consumer's to know
            log.warning("cannot serve transfer %s: %s", transfer_id, exc)
            yield convert.result_chunk(transfer_id, offset, error=_why(exc))
            return
        pieces, first = _Pieces(reader, offset), True
        try:
            while True:
                # One read at a time, only once the call took the last chunk (flow control).
                piece = await asyncio.to_thread(pieces.next)
                if piece is None:
                    break
                start, data = piece
                if first:
                    yield convert.result_chunk(
                        transfer_id, start, data, total_size=ref.size, sha256=ref.sha256
                    )
                else:
                    yield convert.result_chunk("", start, data)
                first = False
        except Exception as exc:  # a read failed mid-way: say why, then stop
            log.warning("serving transfer %s failed: %s", transfer_id, exc)
            yield convert.result_chunk(transfer_id if first else "", offset, error=_why(exc))
            return
        finally:
            await asyncio.to_thread(reader.close)
        if first:  # nothing from offset on (an empty object): just describe it
            yield convert.result_chunk(transfer_id, offset, total_size=ref.size, sha256=ref.sha256)

    async def _presign(
        self, action: ServeResultAction, ref: ResultRef, store: ResultStore, where: ResultLocation
    ) -> str:
        """A presigned URL of the object when the consumer accepts one and the store opted in;
        "" otherwise, or when presigning failed (the bytes are relayed then)."""
        ttl_s = self._presigning.get(ref.store)
        if not action.presigned_url_allowed or ttl_s is None or action.offset >= ref.size:
            return ""
        try:
            url = await asyncio.to_thread(store.presign, where, timedelta(seconds=ttl_s))
            presigned.check_url(url, allow_http=True)  # the consumer judges http itself
        except Exception as exc:  # the relay always works: say why, then stream
            log.warning(
                "transfer %s: cannot presign %s (%s); relaying the bytes",
                action.transfer_id,
                ref.uri,
                _why(exc),
            )
            return ""
        return url

    def _locate(self, action: ServeResultAction) -> tuple[ResultRef, ResultStore, ResultLocation]:
        """(blocking) The reference, the store holding it and the object's location there."""
        ref = ResultRef.from_json(action.ref_json)
        store = self._stores.get(ref.store)
        if store is None:
            have = ", ".join(sorted(self._stores)) or "none"
            raise ServeError(f"this agent has no result store {ref.store!r} (it has: {have})")
        location = locate(store, ref)
        if location is None:
            raise ServeError(f"{ref.uri} is not an object of store {ref.store!r}")
        if not 0 <= action.offset <= ref.size:
            raise ValidationError(f"offset {action.offset} is outside the object")
        return ref, store, location


class _Pieces:
    """(blocking) The object's chunks from ``offset`` on, as (start, data). The bytes before
    ``offset`` are read too: the store's reader checks the whole object's digest."""

    def __init__(self, reader: Any, offset: int) -> None:
        self._chunks: Iterator[bytes] = iter(reader)
        self._position = 0
        self._offset = offset

    def next(self) -> tuple[int, bytes] | None:
        for data in self._chunks:
            start = self._position
            self._position += len(data)
            if self._position <= self._offset:
                continue
            skip = max(0, self._offset - start)
            return start + skip, data[skip:]
        return None


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]
