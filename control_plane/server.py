"""The control plane process: TLS gRPC server, store, dispatcher, with one lifecycle.

Shutdown order (docs/architecture.md, "Conventions"): stop accepting (health NOT_SERVING, the
web console) -> stop the dispatcher so no new work is pushed (then the telemetry observer counts
what is left) -> close agent streams (agents keep running their steps and reconnect later) ->
stop the gRPC server with a grace period for in-flight calls -> close the store.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from control_plane.api.agent_service import AgentService
from control_plane.api.authz import ApiTokenAuth
from control_plane.api.budgets import CallBudgets
from control_plane.api.control_service import SERVER_VERSION, ControlService
from control_plane.api.decoding import RejectUndecodable
from control_plane.api.services import RunNotifier, Services
from control_plane.auth.ca import CertificateAuthority
from control_plane.config import ServerConfig
from control_plane.orchestration.fleet import HeartbeatPolicy
from control_plane.orchestration.values import Effects
from control_plane.scheduler.dispatcher import Dispatcher
from control_plane.scheduler.housekeeping import Housekeeping
from control_plane.scheduler.registry import AgentRegistry, CloseOut
from control_plane.store.db import Store
from control_plane.telemetry.frames import FrameCounts
from protos.meridian.v1 import agent_pb2, agent_pb2_grpc, control_pb2, control_pb2_grpc

if TYPE_CHECKING:
    from control_plane.telemetry.metrics import Metrics
    from control_plane.telemetry.observer import RunObserver
    from control_plane.web.listener import WebListener

log = logging.getLogger(__name__)
SERVICE_NAMES = (
    agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name,
    control_pb2.DESCRIPTOR.services_by_name["ControlService"].full_name,
)


class ControlPlane:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.address = ""
        self.agent_address = ""
        self.ca_file = Path(config.data_dir) / "tls" / "ca.crt"
        self._server: grpc.aio.Server | None = None
        self._services: Services | None = None
        self._health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self._stopped = False
        self.http_address = ""
        # Telemetry (extras "web"/"otel") is loaded only when a listener or exporter needs it.
        self.metrics: Metrics | None = None
        # Agent-stream frames counted by the API layer, rendered by /metrics.
        self.frames = FrameCounts()
        self._observer: RunObserver | None = None
        self._web: WebListener | None = None

    async def __aenter__(self) -> ControlPlane:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()

    async def start(self) -> None:
        data_dir = Path(self.config.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(data_dir, 0o700)
        ca = CertificateAuthority.load_or_create(data_dir / "tls")
        cert_path, key_path = ca.ensure_server_certificate(
            data_dir / "tls", self.config.server_names
        )
        self.ca_file = data_dir / "tls" / "ca.crt"
        store = Store(self.config.database_url)
        await asyncio.get_running_loop().run_in_executor(None, store.migrate)
        self._services = self._wire(store, ca)
        self._server = self._build_server()
        key, cert = key_path.read_bytes(), cert_path.read_bytes()
        # Two listeners: gRPC Python cannot request an *optional* client certificate, so
        # clients (CLI, flow runners, enrollment) use server TLS and agents use mutual TLS.
        self.address = self._listen(self.config.listen, grpc.ssl_server_credentials([(key, cert)]))
        self.agent_address = self._listen(
            self.config.agent_listen,
            grpc.ssl_server_credentials(
                [(key, cert)], root_certificates=ca.certificate_pem, require_client_auth=True
            ),
        )
        self._services.advertised_agent_address = (
            self.config.advertise_agent_address or ":" + self.agent_address.rsplit(":", 1)[1]
        )
        # Hosted flow runners reach the client listener on the host their agent dialled.
        self._services.dispatcher.set_runner_endpoint(
            ":" + self.address.rsplit(":", 1)[1], ca.certificate_pem
        )
        await self._server.start()
        self._services.dispatcher.start()
        if self._services.housekeeping is not None:
            self._services.housekeeping.start()
        if self._observer is not None:
            self._observer.start()
        if self.config.http_listen:
            await self._start_web(cert_path, key_path)
        for name in (*SERVICE_NAMES, ""):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "control plane serving clients on %s, agents on %s", self.address, self.agent_address
        )

    def _listen(self, address: str, credentials: grpc.ServerCredentials) -> str:
        assert self._server is not None
        port = self._server.add_secure_port(address, credentials)
        if port == 0:
            raise OSError(f"cannot listen on {address}")
        host = address.rsplit(":", 1)[0] or "127.0.0.1"
        return f"{host}:{port}"

    def _wire(self, store: Store, ca: CertificateAuthority) -> Services:
        registry = AgentRegistry()
        notifier = RunNotifier()
        dispatcher = Dispatcher(
            store,
            registry,
            notifier.notify,
            sweep_interval_s=self.config.heartbeat_interval_s,
            agent_lost_after_s=self.config.agent_lost_after_s,
            runner_grace_s=self.config.runner_grace_s,
        )
        if self.config.http_listen or self.config.otlp_endpoint:
            from control_plane.telemetry.metrics import Metrics
            from control_plane.telemetry.observer import RunObserver
            from control_plane.telemetry.tracing import RunTraceExporter

            self.metrics = Metrics(SERVER_VERSION)
            store.commit_timer = self.metrics.observe_commit
            exporter = (
                RunTraceExporter(self.config.otlp_endpoint) if self.config.otlp_endpoint else None
            )
            observer = RunObserver(store, self.metrics, exporter)
            self._observer = observer

            def apply(effects: Effects) -> None:
                dispatcher.apply(effects)
                observer.on_effects(effects)  # after the dispatcher, and never before it

            store.after_commit(apply)
        else:
            store.after_commit(dispatcher.apply)  # every committed use case's effects
        housekeeping = Housekeeping(
            store,
            registry,
            run_retention_days=self.config.run_retention_days,
            max_frame_bytes=self.config.max_frame_bytes,
            max_silence_s=dispatcher.max_silence_s,
        )
        return Services(
            self.config,
            store,
            ca,
            registry,
            dispatcher,
            notifier,
            frames=self.frames,
            housekeeping=housekeeping,
        )

    async def _start_web(self, cert_path: Path, key_path: Path) -> None:
        from control_plane.web.guard import Console
        from control_plane.web.listener import WebListener
        from control_plane.web.sessions import SessionTable

        assert self._services is not None and self.config.http_listen
        assert self.metrics is not None
        console = Console(
            store=self._services.store,
            registry=self._services.registry,
            metrics=self.metrics,
            sessions=SessionTable(),
            # The dispatcher gives no new work to an agent silent this long: shown as stale.
            heartbeats=HeartbeatPolicy(
                self.config.heartbeat_interval_s, self.config.agent_lost_after_s
            ),
            metrics_public=self.config.metrics_public,
            frames=self.frames,
        )
        self._web = WebListener(console, self.config.http_listen, cert_path, key_path)
        await self._web.start()
        self.http_address = self._web.address
        log.info("web console and /metrics on https://%s", self.http_address)

    def _build_server(self) -> grpc.aio.Server:
        assert self._services is not None
        limit = self.config.max_message_bytes
        server = grpc.aio.server(
            # The decoding guard is innermost, so the token check still runs first.
            interceptors=[
                CallBudgets(self.config.call_budget_s),
                ApiTokenAuth(self._services.store),
                RejectUndecodable(),
            ],
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.keepalive_time_ms", 20_000),
                ("grpc.keepalive_timeout_ms", 10_000),
                ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.max_concurrent_streams", 1000),
            ],
        )
        agent_pb2_grpc.add_AgentServiceServicer_to_server(AgentService(self._services), server)
        control_pb2_grpc.add_ControlServiceServicer_to_server(
            ControlService(self._services), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        return server

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()

    async def shutdown(self, grace: float = 5.0) -> None:
        if self._stopped or self._server is None or self._services is None:
            return
        self._stopped = True
        await self._health.enter_graceful_shutdown()
        if self._web is not None:
            await self._web.shutdown()
        await self._services.dispatcher.stop()
        if self._services.housekeeping is not None:
            await self._services.housekeeping.stop()
        if self._observer is not None:
            await self._observer.stop()
        # Agent streams never end on their own: close them so stop() need not wait out grace.
        for session in self._services.registry.sessions():
            session.send(CloseOut("the control plane is shutting down"))
        await self._server.stop(grace)
        self._services.store.close()
        log.info("control plane stopped")
