"""AgentService: enrollment, the agent stream, and bundle download for agents.

The stream handler is thin: it authenticates the peer by its certificate, registers an
``AgentSession``, then runs a reader (heartbeats, report batches -> orchestration) and a writer
(outbox -> batched control frames) until either side ends.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import replace

import grpc

from control_plane.api import convert
from control_plane.api.errors import (
    CallTimedOut,
    ProtocolError,
    StreamClosed,
    rpc,
    rpc_stream,
)
from control_plane.api.limits import InFlightLimit
from control_plane.api.services import Services
from control_plane.api.validation import validate_hello
from control_plane.auth.enrollment import enroll_agent
from control_plane.auth.identity import AgentIdentity, identity_from_auth_context
from control_plane.auth.rotation import issued_at, renew_in_s, rotate_certificate
from control_plane.scheduler.registry import AckOut, AgentSession, CloseOut, DrainOut, Outgoing
from control_plane.transfers.broker import (
    Chunk,
    PresignableServe,
    TransferBroker,
    TransferUnavailable,
)
from control_plane.transfers.relay import MAX_URL_LENGTH
from control_plane.usecases.agents import (
    agent_connected,
    agent_disconnected,
    agent_heartbeat,
)
from control_plane.usecases.attempts import apply_reports
from control_plane.usecases.bundles import bundle_for_agent
from control_plane.usecases.runners import runner_exited
from meridian.core.errors import (
    LimitExceeded,
    PermissionDenied,
    Unauthenticated,
    ValidationError,
)
from meridian.core.resultref import store_name_problem
from protos.meridian.v1 import agent_pb2, agent_pb2_grpc, common_pb2

log = logging.getLogger(__name__)
# The end-of-stream marker of grpc.aio reads (missing from the type stubs).
EOF = grpc.aio.EOF  # type: ignore[attr-defined]
CHUNK = 1024 * 1024
MAX_REPORTS_PER_BATCH = 5000
HELLO_TIMEOUT_S = 30.0
MIN_RENEWAL_INTERVAL_S = 1.0
MAX_DOWNLOADS_PER_AGENT = 4
MAX_RESULT_STORES = 64


class AgentService(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, services: Services) -> None:
        self._s = services
        self._downloads = InFlightLimit(MAX_DOWNLOADS_PER_AGENT)
        self._transfers = TransferBroker(
            services.store,
            services.registry,
            services.relay,
            lambda: services.dispatcher.max_silence_s,
        )

    @rpc
    async def Enroll(
        self, request: agent_pb2.EnrollRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.EnrollResponse:
        if len(request.join_token) > 512 or len(request.csr_pem) > 16384:
            raise ValidationError("join token or CSR too large")
        if len(request.name) > 255:
            raise ValidationError("agent name too long (max 255)")
        validity = dt.timedelta(hours=self._s.config.agent_certificate_hours)
        agent, certificate = await self._s.store.run(
            lambda session: enroll_agent(
                session,
                self._s.ca,
                token=request.join_token,
                csr_pem=request.csr_pem,
                name=request.name,
                now=self._s.store.clock(),
                validity=validity,
            )
        )
        log.info("enrolled agent %s (%s) in %s", agent.name, agent.id, agent.environment)
        return agent_pb2.EnrollResponse(
            agent_id=agent.id,
            environment=agent.environment,
            certificate_pem=certificate,
            ca_certificate_pem=self._s.ca.certificate_pem,
            agent_address=self._s.advertised_agent_address,
        )

    @rpc_stream
    async def FetchBundle(
        self, request: agent_pb2.FetchBundleRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[common_pb2.BundleChunk]:
        identity = self._identity(context)
        # Each download holds a whole bundle in memory: bound how many one agent runs at once,
        # so a misbehaving agent cannot exhaust the server for everyone else.
        if not self._downloads.try_acquire(identity.agent_id):
            raise LimitExceeded(
                f"this agent has {self._downloads.limit} bundle downloads in flight already "
                "(the most it may); retry when one finishes"
            )
        try:
            data = await self._s.store.run(bundle_for_agent, identity.agent_id, request.sha256)
            for chunk in bundle_chunks(request.sha256, data):
                yield chunk
        finally:
            self._downloads.release(identity.agent_id)

    @rpc_stream
    async def FetchResult(
        self, request: agent_pb2.FetchResultRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[common_pb2.ResultChunk]:
        """A consuming agent's input from another environment, relayed from an agent there."""
        identity = self._identity(context)
        chunks = self._transfers.fetch_for_agent(
            identity.agent_id,
            request.attempt_id[:64],
            request.fencing_token,
            request.ref_json,
            request.offset,
            accept_presigned_url=request.accept_presigned_url,
        )
        try:
            async for chunk in chunks:
                yield _chunk_to_proto(chunk)
        except TransferUnavailable as exc:
            raise StreamClosed(str(exc)) from None

    @rpc
    async def PushResult(
        self,
        request_iterator: AsyncIterator[common_pb2.ResultChunk],
        context: grpc.aio.ServicerContext,
    ) -> agent_pb2.PushResultResponse:
        """A producing agent's bytes for a transfer it was asked to serve (ServeResult)."""
        identity = self._identity(context)
        chunks = (_chunk_from_proto(chunk) async for chunk in request_iterator)
        try:
            await self._transfers.push(identity.agent_id, chunks)
        except TransferUnavailable as exc:
            raise StreamClosed(str(exc)) from None
        return agent_pb2.PushResultResponse()

    @rpc
    async def Connect(
        self,
        request_iterator: AsyncIterator[agent_pb2.AgentFrame],
        context: grpc.aio.ServicerContext,
    ) -> None:
        identity = self._identity(context)
        try:
            first = await asyncio.wait_for(context.read(), HELLO_TIMEOUT_S)
        except TimeoutError as exc:
            raise CallTimedOut(f"no Hello within {HELLO_TIMEOUT_S:g}s") from exc
        if first is EOF or first.WhichOneof("body") != "hello":
            raise ProtocolError("the first frame must be Hello")
        hello = convert.hello_from_proto(first.hello)
        try:
            validate_hello(hello)
        except ValidationError as exc:
            raise ValidationError(f"Hello refused: {exc}") from exc
        connected, effects = await self._s.store.transact_collect(
            agent_connected, identity.agent_id, identity.fingerprint, hello
        )
        session = AgentSession(connected, str(uuid.uuid4()))
        session.result_stores = advertised_stores(first.hello.result_stores)
        session.default_result_store = convert.default_store(first.hello, session.result_stores)
        session.runner_slots = convert.runner_slots(first.hello)
        session.held_runners = convert.held_runners(first.hello.held_runners)
        replaced = self._s.registry.add(session)
        if replaced is not None:
            replaced.send(CloseOut("a newer connection of this agent took over"))
        log.info("agent %s (%s) connected", connected.name, connected.environment)
        if connected.degraded:
            log.warning("agent %s is degraded: %s", connected.name, connected.degraded)
        await context.write(
            convert.welcome_frame(
                connected.agent_id,
                connected.environment,
                session.session_id,
                self._s.config.heartbeat_interval_s,
                self._s.config.agent_lost_after_s,
                connected.last_applied_seq,
                self._s.config.max_frame_bytes,
                renew_in_s(issued_at(identity), identity.not_after, self._s.store.clock()),
                connected.labels,
            )
        )
        self._s.store.apply_effects(effects)
        if connected.drain_requested:
            session.send(DrainOut("an operator drained this agent"))
        if session.runner_slots:
            self._s.dispatcher.wake_runners()  # runs waiting for a hosted runner may fit now
        await self._serve(session, identity, context)

    async def _serve(
        self, session: AgentSession, identity: AgentIdentity, context: grpc.aio.ServicerContext
    ) -> None:
        reader = asyncio.create_task(self._read_loop(session, identity, context))
        # TLS checks expiry only at the handshake: a stream must not outlive its certificate.
        # The agent reconnects with the certificate it rotated to; its steps keep running.
        expiry = asyncio.get_running_loop().call_later(
            max(0.0, (identity.not_after - self._s.store.clock()).total_seconds()),
            session.send,
            CloseOut("the certificate of this stream expired"),
        )
        try:
            closed = await self._write_loop(session, context, reader)
            if closed is not None:
                # A status with the reason, not a silent end: the agent logs why it reconnects.
                raise (
                    PermissionDenied(closed.reason)
                    if closed.refused
                    else StreamClosed(closed.reason)
                )
            if reader.done() and reader.exception() is not None:
                exc = reader.exception()
                if isinstance(exc, ProtocolError):
                    raise exc
                # AbortError: the call was already aborted with its status (an undecodable
                # frame, control_plane/api/decoding.py); nothing failed here.
                if not isinstance(exc, asyncio.CancelledError | grpc.aio.AbortError):
                    log.warning("agent %s stream failed: %r", session.agent.name, exc)
        finally:
            expiry.cancel()
            reader.cancel()
            if self._s.registry.remove(session):
                if self._s.housekeeping is not None:
                    self._s.housekeeping.agent_gone(session.agent.agent_id)
                last_seen = self._s.store.clock() - dt.timedelta(seconds=session.silent_for())
                await self._s.store.transact(agent_disconnected, session.agent.agent_id, last_seen)
                log.info("agent %s disconnected", session.agent.name)

    async def _write_loop(
        self,
        session: AgentSession,
        context: grpc.aio.ServicerContext,
        reader: asyncio.Task[None],
    ) -> CloseOut | None:
        """Send the outbox until the reader ends (None) or a CloseOut asks to end (returned)."""
        max_bytes = self._s.config.max_frame_bytes
        while True:
            getter = asyncio.ensure_future(session.outbox.get())
            try:
                done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not getter.done():  # the stream ended or the handler was cancelled
                    getter.cancel()
            if getter not in done:
                return None
            items = [getter.result()]
            while not session.outbox.empty() and len(items) < 1000:
                items.append(session.outbox.get_nowait())
            closing = next((i for i in items if isinstance(i, CloseOut)), None)
            frames = [_frame(i) for i in items if not convert.is_close(i)]
            for frame in convert.merge_assign_frames(frames, max_bytes):
                await context.write(frame)
                self._s.frames.sent(frame.WhichOneof("body") or "")
            if closing is not None:
                return closing

    async def _read_loop(
        self,
        session: AgentSession,
        identity: AgentIdentity,
        context: grpc.aio.ServicerContext,
    ) -> None:
        agent_id = session.agent.agent_id
        last_renewal = -float("inf")
        while True:
            frame = await context.read()
            if frame is EOF:
                return
            was_silent = session.silent_for() > self._s.dispatcher.max_silence_s
            session.seen()
            body = frame.WhichOneof("body")
            self._s.frames.received(body or "")
            if body == "heartbeat":
                # The scheduler needs waking only if this agent can newly take work.
                could_take = not session.draining and not session.degraded and not was_silent
                session.draining = frame.heartbeat.draining or session.drain_requested
                degraded = convert.degraded_reason(frame.heartbeat.degraded)
                if degraded != session.degraded:
                    log.warning(
                        "agent %s %s",
                        session.agent.name,
                        f"is degraded: {degraded}" if degraded else "recovered",
                    )
                    session.degraded = degraded
                self._note_loop_stall(session, frame.heartbeat.loop_stall_ms)
                session.held_runners = convert.held_runners(frame.heartbeat.held_runners)
                # Kept in memory (session.seen above); only a change of status is stored now,
                # the time heard from is stored by the lease sweep (decision 0017).
                if session.draining != session.stored_draining:
                    await self._s.store.transact(agent_heartbeat, agent_id, session.draining)
                    session.stored_draining = session.draining
                if not session.draining and not session.degraded and not could_take:
                    self._s.dispatcher.wake()
            elif body == "reports":
                await self._apply_reports(session, frame.reports)
            elif body == "runner_exited":
                exited = convert.runner_exited_from_proto(frame.runner_exited)
                await self._s.store.transact(
                    runner_exited,
                    agent_id,
                    exited.flow_run_id,
                    exited.runner_epoch,
                    exited.exit_code,
                    exited.message,
                )
            elif body in ("result_listing", "results_deleted"):
                await self._housekeeping_answer(session, frame)
            elif body == "renew_certificate":
                # One signing per interval per stream, however fast a broken agent asks.
                now_s = asyncio.get_running_loop().time()
                if now_s - last_renewal < MIN_RENEWAL_INTERVAL_S:
                    raise ProtocolError("certificate renewals are too frequent")
                last_renewal = now_s
                await self._renew(session, identity, frame.renew_certificate.csr_pem)
            else:
                raise ProtocolError(f"unexpected {body or 'empty'} frame after Hello")

    @staticmethod
    def _note_loop_stall(session: AgentSession, stall_ms: int) -> None:
        if stall_ms <= 0:
            return
        log.warning(
            "agent %s: its event loop was blocked for %.2f s since its last heartbeat",
            session.agent.name,
            stall_ms / 1000,
        )
        session.loop_stall_ms = stall_ms
        session.loop_stall_seen = time.monotonic()

    async def _renew(self, session: AgentSession, identity: AgentIdentity, csr_pem: bytes) -> None:
        validity = dt.timedelta(hours=self._s.config.agent_certificate_hours)
        try:
            renewal = await self._s.store.run(
                rotate_certificate, self._s.ca, identity, csr_pem, self._s.store.clock(), validity
            )
        except ValidationError as exc:
            raise ProtocolError(f"certificate renewal refused: {exc}") from exc
        if renewal.certificate_pem:
            log.info("agent %s rotated its certificate", session.agent.name)
        else:
            log.warning("agent %s: renewal refused: %s", session.agent.name, renewal.refused)
        session.send(renewal)

    async def _housekeeping_answer(
        self, session: AgentSession, frame: agent_pb2.AgentFrame
    ) -> None:
        """A listing page or a deletion answer (result-store housekeeping)."""
        housekeeping = self._s.housekeeping
        if housekeeping is None:
            return  # nothing was asked: an agent volunteering answers is ignored
        agent_id = session.agent.agent_id
        if frame.WhichOneof("body") == "result_listing":
            page = convert.result_listing_from_proto(frame.result_listing)
            housekeeping.on_listing(agent_id, page)
        else:
            answer = convert.results_deleted_from_proto(frame.results_deleted)
            await housekeeping.on_results_deleted(agent_id, answer)

    async def _apply_reports(self, session: AgentSession, batch: agent_pb2.ReportBatch) -> None:
        if len(batch.reports) > MAX_REPORTS_PER_BATCH:
            raise ProtocolError(f"more than {MAX_REPORTS_PER_BATCH} reports in one batch")
        now = self._s.store.clock()
        try:
            reports = [convert.report_from_proto(r, now) for r in batch.reports]
        except ValueError as exc:
            raise ProtocolError(str(exc)) from exc
        watermark, decisions = await self._s.store.transact(
            apply_reports, session.agent.agent_id, reports, result_stores=session.result_stores
        )
        # Acknowledge only after the commit above: the agent may then forget these reports.
        session.send(AckOut(watermark))
        if decisions:
            session.send(decisions)

    def _identity(self, context: grpc.aio.ServicerContext) -> AgentIdentity:
        identity = identity_from_auth_context(context.auth_context())
        if identity is None:
            raise Unauthenticated(
                "this call needs the agent's client certificate; run `meridian agent enroll`"
            )
        return identity


def advertised_stores(names: Sequence[str]) -> tuple[str, ...]:
    """The result store names of a Hello that are store names at all (bounded)."""
    return tuple(n for n in names[:MAX_RESULT_STORES] if store_name_problem(n) is None)


# The presigned-URL fields of transfers (decision 0020), on top of the common conversions.


def _frame(item: Outgoing) -> agent_pb2.ControlFrame:
    frame = convert.outgoing_to_frame(item)
    if isinstance(item, PresignableServe) and item.presigned_url_allowed:
        frame.serve_result.presigned_url_allowed = True
    return frame


def _chunk_to_proto(chunk: Chunk) -> common_pb2.ResultChunk:
    msg = convert.chunk_to_proto(chunk)
    if chunk.presigned_url:
        msg.presigned_url = chunk.presigned_url
        msg.presigned_url_ttl_s = chunk.presigned_url_ttl_s
    return msg


def _chunk_from_proto(msg: common_pb2.ResultChunk) -> Chunk:
    chunk = convert.chunk_from_proto(msg)
    if not msg.presigned_url:
        return chunk
    # One character over the bound is enough for the broker to refuse a longer URL.
    return replace(
        chunk,
        presigned_url=msg.presigned_url[: MAX_URL_LENGTH + 1],
        presigned_url_ttl_s=msg.presigned_url_ttl_s,
    )


def bundle_chunks(sha256: str, data: bytes) -> Iterator[common_pb2.BundleChunk]:
    for offset in range(0, max(len(data), 1), CHUNK):
        first = offset == 0
        yield common_pb2.BundleChunk(
            sha256=sha256 if first else "",
            total_size=len(data) if first else 0,
            data=data[offset : offset + CHUNK],
        )
