"""A small fake control plane for agent tests: a real grpc.aio server over loopback mTLS.

It implements AgentService (Enroll, Connect, FetchBundle) with a throwaway test CA
(``tests.support.tls.TestPKI``), and lets a test drive each Connect session by hand: read the
agent's Hello, send Welcome, Assign, Decision, Cancel, Ack, and drop the stream. Also holds
``FakeProvider``, a real Provider whose "infrastructure" is an in-process coroutine configured
by per-step options.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import grpc

from protos.meridian.v1 import agent_pb2, agent_pb2_grpc, common_pb2
from providers.base import (
    Capabilities,
    ErrorInfo,
    ExecutionSpec,
    Handle,
    LogRecord,
    Outcome,
    Provider,
    ProviderError,
)
from tests.support.deadlines import DEADLINE_S
from tests.support.tls import TestPKI

JOIN_TOKEN = "good-token"


# ---- sessions -----------------------------------------------------------------------------

_DROP = object()


@dataclass
class Session:
    """One Connect stream as the fake control plane sees it."""

    peer_cn: str
    hello: Any = None
    hello_seen: asyncio.Event = field(default_factory=asyncio.Event)
    outbox: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    reports: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    heartbeats: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    auto_ack: bool = False
    max_seq: int = 0
    report_frames: int = 0  # ReportBatch frames received (each holds one or more reports)
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    def send(self, **body: Any) -> None:
        self.outbox.put_nowait(agent_pb2.ControlFrame(**body))

    def welcome(self, last_applied_seq: int = 0, heartbeat_interval_s: float = 0.2) -> None:
        self.send(
            welcome=agent_pb2.Welcome(
                agent_id=self.peer_cn,
                environment="test-env",
                session_id="s-1",
                heartbeat_interval_s=heartbeat_interval_s,
                lease_timeout_s=30.0,
                last_applied_seq=last_applied_seq,
                max_frame_bytes=1024 * 1024,
            )
        )

    def assign(self, attempt_id: str, token: int, provider: str = "fake", **options: Any) -> None:
        self.assign_many([(attempt_id, token)], provider, **options)

    def assign_many(
        self, attempts: list[tuple[str, int]], provider: str = "fake", **options: Any
    ) -> None:
        """One AssignBatch frame holding every (attempt id, token) of ``attempts``."""
        spec = common_pb2.StepSpec(
            name="step",
            module="m",
            function="f",
            provider=provider,
            options_json=json.dumps(options),
        )
        assignments = [
            agent_pb2.Assign(
                attempt_id=attempt_id,
                fencing_token=token,
                flow_run_id="run-1",
                step_run_id=f"sr-{attempt_id}",
                step_key="step#1",
                attempt_number=1,
                spec=spec,
                inputs_json='{"args": [], "kwargs": {}}',
            )
            for attempt_id, token in attempts
        ]
        self.send(assign=agent_pb2.AssignBatch(assignments=assignments))

    def decide(self, attempt_id: str, token: int, accept: bool = True) -> None:
        verdict = agent_pb2.VERDICT_ACCEPT if accept else agent_pb2.VERDICT_REJECT
        decision = agent_pb2.Decision(attempt_id=attempt_id, fencing_token=token, verdict=verdict)
        self.send(decisions=agent_pb2.DecisionBatch(decisions=[decision]))

    def cancel(self, attempt_id: str, token: int, reason: str = "cancelled by test") -> None:
        self.send(
            cancel=agent_pb2.Cancel(
                attempt_id=attempt_id, fencing_token=token, reason=reason, grace_s=1.0
            )
        )

    def ack(self, up_to_seq: int) -> None:
        self.send(ack=agent_pb2.Ack(up_to_seq=up_to_seq))

    def ack_everything(self) -> None:
        """Ack what arrived so far and everything that arrives from now on."""
        self.auto_ack = True
        if self.max_seq:
            self.ack(self.max_seq)

    def drop(self) -> None:
        """End the stream from the server side, as a restarted control plane would."""
        self.outbox.put_nowait(_DROP)

    async def next_report(self, timeout: float = DEADLINE_S) -> Any:
        return await asyncio.wait_for(self.reports.get(), timeout)

    async def reports_until_finished(self, attempt_id: str) -> list[Any]:
        """Every report (of any attempt) up to and including ``attempt_id``'s finished one."""
        seen: list[Any] = []
        while True:
            report = await self.next_report()
            seen.append(report)
            if report.attempt_id == attempt_id and report.WhichOneof("body") == "finished":
                return seen

    async def next_heartbeat(self, timeout: float = DEADLINE_S) -> Any:
        return await asyncio.wait_for(self.heartbeats.get(), timeout)


class FakeControlPlane(agent_pb2_grpc.AgentServiceServicer):
    """AgentService over loopback mTLS, driven by the test through ``Session`` objects."""

    def __init__(self, pki: TestPKI, bundles: Mapping[str, bytes] | None = None) -> None:
        self.pki = pki
        self.bundles = dict(bundles or {})
        self.sessions: asyncio.Queue[Session] = asyncio.Queue()
        self.auto_ack = False
        self.latest: Session | None = None
        self._server: Any = None
        self._enroll_server: Any = None
        self.address = ""
        self.enroll_address = ""

    async def start(self) -> str:
        """Serve on two loopback ports.

        grpc Python can either require a client certificate or not request one at all, so
        cert-less Enroll and mTLS Connect cannot share a listener: ``address`` requires the
        agent's certificate, ``enroll_address`` only authenticates the server.
        """
        self._server, port = await self._serve(require_client_auth=True)
        self._enroll_server, enroll_port = await self._serve(require_client_auth=False)
        self.address = f"127.0.0.1:{port}"
        self.enroll_address = f"127.0.0.1:{enroll_port}"
        return self.address

    async def _serve(self, *, require_client_auth: bool) -> tuple[Any, int]:
        server = grpc.aio.server()
        agent_pb2_grpc.add_AgentServiceServicer_to_server(self, server)
        creds = grpc.ssl_server_credentials(
            [(self.pki.server_key_pem, self.pki.server_cert_pem)],
            root_certificates=self.pki.ca_pem,
            require_client_auth=require_client_auth,
        )
        port = server.add_secure_port("127.0.0.1:0", creds)
        await server.start()
        return server, port

    async def stop(self) -> None:
        for server in (self._server, self._enroll_server):
            if server is not None:
                await server.stop(0)

    async def next_session(self, timeout: float = DEADLINE_S) -> Session:
        session = await asyncio.wait_for(self.sessions.get(), timeout)
        await asyncio.wait_for(session.hello_seen.wait(), timeout)
        return session

    async def Enroll(self, request: Any, context: Any) -> Any:
        if request.join_token != JOIN_TOKEN:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "join token is not valid")
        cert = self.pki.sign_csr(request.csr_pem, "agent-1")
        return agent_pb2.EnrollResponse(
            agent_id="agent-1",
            environment="test-env",
            certificate_pem=cert,
            ca_certificate_pem=self.pki.ca_pem,
        )

    async def Connect(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        names = context.auth_context().get("x509_common_name") or []
        if not names:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "client certificate required")
        session = Session(peer_cn=names[0].decode(), auto_ack=self.auto_ack)
        self.latest = session
        self.sessions.put_nowait(session)
        reader = asyncio.ensure_future(self._read(session, request_iterator))
        try:
            while True:
                item = await session.outbox.get()
                if item is _DROP:
                    return
                yield item
        finally:
            reader.cancel()
            session.ended.set()

    async def _read(self, session: Session, request_iterator: Any) -> None:
        async for frame in request_iterator:
            kind = frame.WhichOneof("body")
            if kind == "hello":
                session.hello = frame.hello
                session.hello_seen.set()
            elif kind == "heartbeat":
                session.heartbeats.put_nowait(frame.heartbeat)
            elif kind == "reports":
                session.report_frames += 1
                for report in frame.reports.reports:
                    session.reports.put_nowait(report)
                    session.max_seq = max(session.max_seq, report.seq)
                if session.auto_ack and frame.reports.reports:
                    session.ack(frame.reports.reports[-1].seq)

    async def FetchBundle(self, request: Any, context: Any) -> AsyncIterator[Any]:
        data = self.bundles.get(request.sha256)
        if data is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"bundle {request.sha256} not found")
            return
        yield common_pb2.BundleChunk(sha256=request.sha256, total_size=len(data), data=data[:10])
        yield common_pb2.BundleChunk(data=data[10:])


# ---- a provider whose infrastructure is a coroutine ---------------------------------------


@dataclass
class _Run:
    spec: ExecutionSpec
    logs: asyncio.Queue[LogRecord | None]
    task: asyncio.Task[Outcome] | None = None


class FakeProvider(Provider):
    """Runs each attempt as an in-process coroutine; options: run_for, exit_code, lines,
    start_error."""

    type = "fake"
    capabilities = Capabilities(recover=True)
    options_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "properties": {
            "run_for": {"type": "number"},
            "exit_code": {"type": "integer"},
            "lines": {"type": "integer"},
            "start_error": {"type": "string"},
        },
    }

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        self.submitted: list[str] = []
        self.cancelled: list[str] = []
        self.closed = False
        self.runs: dict[str, _Run] = {}

    async def submit(self, spec: ExecutionSpec) -> Handle:
        if spec.options.get("start_error"):
            raise ProviderError(str(spec.options["start_error"]))
        self.submitted.append(spec.attempt_id)
        run = _Run(spec=spec, logs=asyncio.Queue())
        run.task = asyncio.ensure_future(self._body(run))
        self.runs[spec.attempt_id] = run
        return Handle(
            provider=self.type, resource_id=f"fake-{spec.attempt_id}", data={"id": spec.attempt_id}
        )

    async def _body(self, run: _Run) -> Outcome:
        opts = run.spec.options
        try:
            for i in range(int(opts.get("lines", 0))):
                run.logs.put_nowait(LogRecord("stdout", f"line {i}", 0))
            await asyncio.sleep(float(opts.get("run_for", 0.0)))
        except asyncio.CancelledError:
            return Outcome(state="cancelled", exit_code=-15)
        finally:
            run.logs.put_nowait(None)
        code = int(opts.get("exit_code", 0))
        if code == 0:
            return Outcome(state="succeeded", exit_code=0, result_json='{"ok": true}')
        error = ErrorInfo("transient", "builtins.RuntimeError", f"exit {code}")
        return Outcome(state="failed", exit_code=code, error=error)

    def _run(self, handle: Handle) -> _Run:
        return self.runs[str(handle.data["id"])]

    async def wait(self, handle: Handle) -> Outcome:
        task = self._run(handle).task
        assert task is not None
        return await asyncio.shield(task)

    async def logs(self, handle: Handle) -> AsyncIterator[LogRecord]:
        queue = self._run(handle).logs
        while (record := await queue.get()) is not None:
            yield record

    async def cancel(self, handle: Handle, grace_s: float) -> None:
        self.cancelled.append(str(handle.data["id"]))
        task = self._run(handle).task
        assert task is not None
        task.cancel()

    async def recover(self, handle: Handle) -> bool:
        return str(handle.data.get("id")) in self.runs

    async def close(self) -> None:
        self.closed = True
