"""The agent's long-lived connection worker: one outbound stream, kept open for ever.

Each session sends Hello, waits for Welcome, then runs three loops side by side: heartbeats,
journal replay/streaming of reports, and receiving control frames (turned into actions for the
worker). Any stream error ends the session; the next one starts after an exponential backoff
with full jitter and replays every unacked report. Runners never wait for the connection: they
write to the journal and keep going while disconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from agent import convert
from agent.actions import AckAction, Action, CertificateAction, Welcome
from agent.journal import Journal, JournalEntry
from agent.reporter import Reporter
from agent.reports import HeartbeatInfo, HelloInfo
from agent.rotation import CertificateRotator
from meridian.core.errors import ConnectionFailed

log = logging.getLogger("meridian.agent.connection")

# The end-of-stream marker of grpc.aio calls (missing from the type stubs).
_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]

MAX_BATCH_BYTES = 1024 * 1024
# Framing overhead per report on top of its journaled payload (seq, ids, token, tags).
REPORT_OVERHEAD_BYTES = 96
REPLAY_PAGE = 500
DEFAULT_HEARTBEAT_S = 5.0


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
        hello: Callable[[], HelloInfo],
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
        self._reset_backoff = False
        self._stopped = False
        self.connected = False
        self.welcome: Welcome | None = None

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
                log.warning("connection to control plane lost: %s", _describe(exc))
            if self._reset_backoff:  # the last session got as far as Welcome
                failures = 0
            delay = backoff_delay(failures, self._base_backoff_s, self._max_backoff_s)
            failures += 1
            await asyncio.sleep(delay)

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
            if self._journal.count() == 0:
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
        try:
            await call.write(convert.hello_to_proto(self._hello()))
            first = await call.read()
            if first is _EOF:
                raise ConnectionFailed("control plane closed the stream before Welcome")
            welcome = convert.action_from_proto(first)
            if not isinstance(welcome, Welcome):
                raise ConnectionFailed(f"control plane sent {welcome!r} before Welcome")
            self._apply_welcome(welcome)
            async with asyncio.TaskGroup() as group:
                group.create_task(self._send_heartbeats(call))
                group.create_task(self._send_reports(call))
                group.create_task(self._receive(call))
                if self._rotator is not None:
                    group.create_task(self._rotate(call, self._rotator))
        finally:
            self.connected = False
            call.cancel()

    def _apply_welcome(self, welcome: Welcome) -> None:
        # Reports applied before the last stream broke, whose Ack was lost on the way.
        self._journal.reconcile(welcome.last_applied_seq)
        if welcome.heartbeat_interval_s > 0:
            self._heartbeat_s = welcome.heartbeat_interval_s
        limit = welcome.max_frame_bytes or MAX_BATCH_BYTES
        self._max_batch_bytes = min(MAX_BATCH_BYTES, limit)
        if self._rotator is not None:
            self._rotator.schedule(welcome.certificate_renew_in_s)
        self.welcome = welcome
        self.connected = True
        self._reset_backoff = True
        log.info(
            "connected to control plane as %s (session %s)", welcome.agent_id, welcome.session_id
        )

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
            entries = self._journal.unacked(after_seq=cursor, limit=REPLAY_PAGE)
            if not entries:
                await self._reporter.appended.wait()
                continue
            for batch in batch_entries(entries, self._max_batch_bytes):
                await self._write(call, convert.report_batch_to_proto(batch))
                cursor = batch[-1].seq

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
                self._journal.ack(action.up_to_seq)
                self._acked.set()
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


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}"
