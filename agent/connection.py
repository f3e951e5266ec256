"""The agent's long-lived connection worker: one outbound stream, kept open for ever.

Each session sends Hello, waits for Welcome, then runs three loops side by side: heartbeats,
journal replay/streaming of reports, and receiving control frames (turned into actions for the
worker). Any stream error ends the session; the next one starts after an exponential backoff
with full jitter and replays every unacked report. Runners never wait for the connection: they
write to the journal and keep going while disconnected. Journal calls run in worker threads,
never on the event loop. Reports go out in batches: every wake-up (one per journal batch) sends
all that is committed and unacked, up to the frame limit per ``ReportBatch``, optionally after
lingering ``report_linger_s`` so reports committed a moment later ride along. Acks are applied
with the next journal batch, without holding up the reading of control frames.

Two kinds of failure are not retried blindly:

* A journal entry that can never be delivered (undecodable, of no known kind, larger than the
  negotiated frame, or refused by the control plane ``QUARANTINE_AFTER`` times in a row while
  it was the oldest unacked one, sent alone) is quarantined (``Journal.quarantine``) and its
  attempt is reported failed with the reason, so the attempt ends and the stream moves on.
* A refusal retrying cannot fix (PERMISSION_DENIED or UNAUTHENTICATED: labels outside the join
  token, a revoked agent, a superseded certificate; or TLS rejecting the certificates, i.e. a
  CA that did not issue them, ``TLS_REFUSALS`` times in a row) ends ``run()`` with
  ``AgentRefused``: the agent exits non-zero with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import grpc

from agent import convert
from agent.actions import AckAction, Action, CertificateAction, Welcome
from agent.journal import Journal, JournalEntry
from agent.reporter import Reporter
from agent.reports import AttemptFinished, HeartbeatInfo, HelloInfo, LogChunk, LogLine
from agent.rotation import CertificateRotator
from meridian.core.errors import ConnectionFailed, PermissionDenied
from providers.base import ErrorInfo

log = logging.getLogger("meridian.agent.connection")

# The end-of-stream marker of grpc.aio calls (missing from the type stubs).
_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]

MAX_BATCH_BYTES = 1024 * 1024
# Framing overhead per report on top of its journaled payload (seq, ids, token, tags).
REPORT_OVERHEAD_BYTES = 96
REPLAY_PAGE = 500
DEFAULT_HEARTBEAT_S = 5.0
# Sessions ended by a refusal of the same oldest entry before it is quarantined.
QUARANTINE_AFTER = 3
TLS_REFUSALS = 3
_REFUSED_REPORT_CODES = {"RESOURCE_EXHAUSTED", "INVALID_ARGUMENT"}
_FATAL_CODES = {"PERMISSION_DENIED", "UNAUTHENTICATED"}
_TLS_REFUSAL_MARKERS = (
    "certificate_verify_failed",
    "certificate verify failed",
    "unknown ca",
    "unknown_ca",
    "bad certificate",
    "bad_certificate",
    "handshake failed",
)
QUARANTINED_TYPE = "meridian.ReportQuarantined"


class AgentRefused(PermissionDenied):
    """The control plane refused this agent for a reason reconnecting cannot fix."""


def backoff_delay(
    attempt: int, base: float, cap: float, rand: Callable[[], float] = random.random
) -> float:
    """Seconds to wait before reconnect number ``attempt`` (0-based): "full jitter".

    Uniform in ``[0, min(cap, base * 2**attempt)]``, so a fleet of agents that lost the control
    plane at the same moment does not reconnect in lockstep.
    """
    ceiling = min(cap, base * (2.0 ** min(max(attempt, 0), 60)))
    return rand() * ceiling


def batch_entries(entries: Sequence[JournalEntry], max_bytes: int) -> list[list[JournalEntry]]:
    """Split ``entries`` (in order) into batches whose estimated frame size fits ``max_bytes``.

    A single entry larger than the limit travels alone; runners bound their reports so that
    does not happen in practice.
    """
    batches: list[list[JournalEntry]] = []
    current: list[JournalEntry] = []
    size = 0
    for entry in entries:
        cost = len(entry.payload) + len(entry.attempt_id) + REPORT_OVERHEAD_BYTES
        if current and size + cost > max_bytes:
            batches.append(current)
            current, size = [], 0
        current.append(entry)
        size += cost
    if current:
        batches.append(current)
    return batches


class Connection:
    """Keeps the Connect stream open, reconnecting with backoff until cancelled."""

    def __init__(
        self,
        stub: Any,
        journal: Journal,
        reporter: Reporter,
        on_action: Callable[[Action], None],
        hello: Callable[[], HelloInfo | Awaitable[HelloInfo]],
        heartbeat: Callable[[], HeartbeatInfo],
        *,
        base_backoff_s: float = 0.2,
        max_backoff_s: float = 10.0,
        rotator: CertificateRotator | None = None,
    ) -> None:
        self._stub = stub
        self._journal = journal
        self._reporter = reporter
        self._on_action = on_action
        self._hello = hello
        self._heartbeat = heartbeat
        self._base_backoff_s = base_backoff_s
        self._max_backoff_s = max_backoff_s
        self._rotator = rotator
        self._heartbeat_s = DEFAULT_HEARTBEAT_S
        self._max_batch_bytes = MAX_BATCH_BYTES
        self._write_lock = asyncio.Lock()
        self._beat_now = asyncio.Event()
        self._acked = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()  # acks being written
        self._reset_backoff = False
        self._stopped = False
        self._suspect: tuple[int, int] = (0, 0)  # (oldest unacked seq, sessions it was refused)
        self._tls_refusals = 0
        self.connected = False
        self.welcome: Welcome | None = None
        self._call: Any = None  # the open stream, while a session runs

    async def run(self) -> None:
        """Connect, serve the session, back off, repeat; returns after ``stop()``."""
        failures = 0
        while not self._stopped:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # On 3.11 a TaskGroup turns "cancelled while a child failed" into this branch
                # (the cancellation is consumed), so the stop flag is what ends the loop.
                if self._stopped:
                    return
                self._check_fatal(exc)
                await self._note_refused_report(exc)
                log.warning("connection to control plane lost: %s", _describe(exc))
            if self._reset_backoff:  # the last session got as far as Welcome
                failures = 0
            delay = backoff_delay(failures, self._base_backoff_s, self._max_backoff_s)
            failures += 1
            await asyncio.sleep(delay)

    def _check_fatal(self, exc: BaseException) -> None:
        codes = _codes(exc)
        if codes & _FATAL_CODES:
            raise AgentRefused(f"the control plane refused this agent: {_describe(exc)}")
        text = _describe(exc).lower()
        if any(marker in text for marker in _TLS_REFUSAL_MARKERS):
            self._tls_refusals += 1
            if self._tls_refusals >= TLS_REFUSALS:
                raise AgentRefused(
                    "TLS refused the connection: the control plane's CA did not issue this "
                    "agent's certificate or the CA file does not match the control plane "
                    f"({_describe(exc)}); enroll again with a join token of this control plane"
                )
        else:
            self._tls_refusals = 0

    async def _note_refused_report(self, exc: BaseException) -> None:
        """Count sessions refused while the same entry was the oldest unacked one."""
        if not _codes(exc) & _REFUSED_REPORT_CODES:
            self._suspect = (0, 0)
            return
        head = await asyncio.to_thread(self._journal.unacked, 0, 1)
        if not head:
            return
        seq, count = self._suspect
        count = count + 1 if seq == head[0].seq else 1
        self._suspect = (head[0].seq, count)
        if count >= QUARANTINE_AFTER:
            await self._quarantine(head[0], f"the control plane refused it: {_describe(exc)}")
            self._suspect = (0, 0)

    async def _quarantine(self, entry: JournalEntry, reason: str) -> None:
        """Move ``entry`` aside for good and tell the control plane why its attempt ends."""
        moved = await asyncio.to_thread(self._journal.quarantine, entry.seq, reason)
        if moved is None:
            return
        log.error(
            "quarantined journal entry %d (%s report of attempt %s, %d bytes): %s",
            entry.seq,
            entry.kind,
            entry.attempt_id,
            len(entry.payload),
            reason,
        )
        what = (
            f"the agent quarantined a {entry.kind or 'unknown'} report of this attempt "
            f"({len(entry.payload)} bytes, journal seq {entry.seq}): {reason}"
        )
        body: LogChunk | AttemptFinished
        if entry.kind == "logs":
            body = LogChunk((LogLine(0, "agent", f"... {what} ..."),))
        else:
            error = ErrorInfo(error_class="permanent", type=QUARANTINED_TYPE, message=what)
            body = AttemptFinished(outcome="failed", error=error)
        await self._reporter.report(entry.attempt_id, entry.fencing_token, body)

    def _read_page(self, cursor: int) -> tuple[list[JournalEntry], list[tuple[JournalEntry, str]]]:
        """(worker thread) The next page of unacked reports after ``cursor`` and those of them
        that can never be delivered, with why: one thread hop per page, not per report."""
        entries = self._journal.unacked(cursor, REPLAY_PAGE)
        problems = [(e, p) for e in entries if (p := self._deliverable(e)) is not None]
        return entries, problems

    def _deliverable(self, entry: JournalEntry) -> str | None:
        """Why ``entry`` can never be delivered, or None when it can."""
        try:
            convert.decode_report(entry.payload)
        except ValueError as exc:
            return str(exc)
        if len(entry.payload) > self._reporter.payload_limit:
            return (
                f"{len(entry.payload)} bytes is over the control plane's frame limit "
                f"({self._reporter.payload_limit} bytes for one report)"
            )
        return None

    def stop(self) -> None:
        """Make ``run()`` end; the caller then cancels its task to interrupt the stream."""
        self._stopped = True

    def send_heartbeat_now(self) -> None:
        """Send a heartbeat at once (e.g. to announce draining) instead of at the next tick."""
        self._beat_now.set()

    async def flush(self, timeout_s: float) -> bool:
        """Wait until every journaled report is acked, for at most ``timeout_s`` while connected."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            self._acked.clear()  # before counting, so an ack in between is not missed
            if await asyncio.to_thread(self._journal.count) == 0:
                return True
            remaining = deadline - loop.time()
            if not self.connected or remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._acked.wait(), remaining)
            except TimeoutError:
                return False

    async def _session(self) -> None:
        self._reset_backoff = False
        refresh = getattr(self._stub, "refresh", None)
        if refresh is not None:  # an AgentEndpoint: find the agent listener first
            await refresh()
        call = self._stub.Connect()
        self._call = call
        try:
            hello = self._hello()
            if inspect.isawaitable(hello):
                hello = await hello
            await call.write(convert.hello_to_proto(hello))
            first = await call.read()
            if first is _EOF:
                raise ConnectionFailed("control plane closed the stream before Welcome")
            welcome = convert.action_from_proto(first)
            if not isinstance(welcome, Welcome):
                raise ConnectionFailed(f"control plane sent {welcome!r} before Welcome")
            await self._apply_welcome(welcome)
            async with asyncio.TaskGroup() as group:
                group.create_task(self._send_heartbeats(call))
                group.create_task(self._send_reports(call))
                group.create_task(self._receive(call))
                if self._rotator is not None:
                    group.create_task(self._rotate(call, self._rotator))
        finally:
            self.connected = False
            self._call = None
            call.cancel()

    async def _apply_welcome(self, welcome: Welcome) -> None:
        # Reports applied before the last stream broke, whose Ack was lost on the way.
        await asyncio.to_thread(self._journal.reconcile, welcome.last_applied_seq)
        if welcome.max_frame_bytes > 0:
            await asyncio.to_thread(self._reporter.negotiated, welcome.max_frame_bytes)
        if welcome.heartbeat_interval_s > 0:
            self._heartbeat_s = welcome.heartbeat_interval_s
        limit = welcome.max_frame_bytes or MAX_BATCH_BYTES
        self._max_batch_bytes = min(MAX_BATCH_BYTES, limit)
        if self._rotator is not None:
            self._rotator.schedule(welcome.certificate_renew_in_s)
        self.welcome = welcome
        self.connected = True
        self._reset_backoff = True
        labels = ",".join(f"{k}={v}" for k, v in welcome.labels) or "(none)"
        log.info(
            "connected to control plane as %s (session %s; labels %s)",
            welcome.agent_id,
            welcome.session_id,
            labels,
        )

    async def send(self, frame: Any) -> None:
        """Write one frame on the open stream: answers to result-store housekeeping. They are
        not journaled; one that finds no stream is lost, and the control plane asks again."""
        call = self._call
        if call is None or not self.connected:
            raise ConnectionFailed("not connected to the control plane")
        await self._write(call, frame)

    async def _write(self, call: Any, frame: Any) -> None:
        # grpc.aio allows one outstanding write per stream.
        async with self._write_lock:
            await call.write(frame)

    async def _send_heartbeats(self, call: Any) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel.
                async with asyncio.timeout(self._heartbeat_s):
                    await self._beat_now.wait()
            self._beat_now.clear()
            await self._write(call, convert.heartbeat_to_proto(self._heartbeat()))

    async def _send_reports(self, call: Any) -> None:
        # Each session starts from the oldest unacked report: a replay after reconnect sends
        # the same seqs again and the control plane applies each at most once.
        cursor = 0
        while True:
            self._reporter.appended.clear()  # before reading, so an append in between wakes us
            entries, problems = await asyncio.to_thread(self._read_page, cursor)
            if not entries:
                await self._reporter.appended.wait()
                linger = self._reporter.limits.report_linger_s
                if linger > 0:
                    # Let reports committed in the next moment ride in the same frame.
                    await asyncio.sleep(linger)
                continue
            for entry, problem in problems:
                await self._quarantine(entry, problem)
            quarantined = {entry.seq for entry, _ in problems}
            good = [entry for entry in entries if entry.seq not in quarantined]
            cursor = entries[-1].seq if not good else cursor
            # While an entry is suspected of being refused, send one report per frame so the
            # refusal can be pinned on the right one.
            limit = 1 if self._suspect[1] else self._max_batch_bytes
            for batch in batch_entries(good, limit):
                await self._write(call, convert.report_batch_to_proto(batch))
                cursor = batch[-1].seq

    async def _apply_ack(self, up_to_seq: int) -> None:
        await self._reporter.ack(up_to_seq)
        self._acked.set()  # flush() counts the journal again

    def _track(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._background.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("could not apply an ack to the journal: %s", t.exception())

        task.add_done_callback(done)

    async def _rotate(self, call: Any, rotator: CertificateRotator) -> None:
        while True:
            await rotator.wait_due()
            await self._write(call, convert.renew_certificate_frame(rotator.request()))

    async def _receive(self, call: Any) -> None:
        while True:
            frame = await call.read()
            if frame is _EOF:
                raise ConnectionFailed("control plane closed the stream")
            action = convert.action_from_proto(frame)
            if isinstance(action, AckAction):
                # Deleted with the next journal batch; reading frames does not wait for it.
                self._suspect = (0, 0)
                self._track(self._apply_ack(action.up_to_seq))
            elif isinstance(action, CertificateAction):
                if self._rotator is not None:
                    self._rotator.answer(action)
            elif isinstance(action, Welcome):
                log.warning("ignoring a second Welcome on session %s", action.session_id)
            else:
                try:
                    self._on_action(action)
                except Exception:
                    # A bug handling one frame must not tear down the stream for every attempt.
                    log.exception("could not apply %r", action)


def _codes(exc: BaseException) -> set[str]:
    if isinstance(exc, BaseExceptionGroup):
        return set().union(*(_codes(e) for e in exc.exceptions))
    if isinstance(exc, grpc.aio.AioRpcError):
        return {exc.code().name}
    return set()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}"
