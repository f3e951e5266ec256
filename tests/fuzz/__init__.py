"""Property-based fuzz tests of Meridian's hostile-input hardening (issue 4, "Hostile input").

Shared pieces live here: the hypothesis settings every fuzz test uses (no example database,
derandomized, bounded, no deadline, so CI runs are reproducible and fast) and ``FuzzPlane``, a
real in-process control plane on its own event-loop thread with a log watch, so properties
can check both the status codes clients see and what the server logged.

The control plane itself is started the way ``tests/control_plane/api/test_edges.py`` does it
(its ``ThreadedControlPlane`` is reused).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, settings

from control_plane import ControlPlane, ServerConfig, create_api_token, create_join_token
from protos.meridian.v1 import agent_pb2_grpc, control_pb2, control_pb2_grpc
from tests.support.deadlines import DEADLINE_S
from tests.support.plane import ThreadedControlPlane

# Every fuzz test derives its settings from this one; max_examples is set per test so the
# whole directory stays within about a minute on two cores.
FUZZ = settings(
    database=None,
    derandomize=True,
    deadline=None,
    max_examples=20,
    print_blob=False,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.filter_too_much,
    ],
)

# Every call's deadline: a hostile request is answered at once or the plane is in trouble, and
# on a loaded machine even that answer may take a while.
CALL_TIMEOUT_S = DEADLINE_S
CLIENT_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]
# The codes a hostile request may be answered with; INTERNAL and UNKNOWN never.
EXPECTED_REFUSALS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
    }
)


class LogWatch(logging.Handler):
    """Keeps every WARNING-or-worse record the server side emits (control_plane.*, grpc.*)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self._lock_records = threading.Lock()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(("control_plane", "grpc")):
            with self._lock_records:
                self.records.append(record)

    def mark(self) -> int:
        with self._lock_records:
            return len(self.records)

    def since(self, mark: int) -> list[str]:
        with self._lock_records:
            records = self.records[mark:]
        return [f"{r.levelname} {r.name}: {r.getMessage()}" for r in records]


@dataclass
class FuzzPlane:
    """A running control plane and the clients fuzz tests reach it with."""

    config: ServerConfig
    plane: ControlPlane
    ca_pem: bytes
    channel: grpc.Channel
    control: control_pb2_grpc.ControlServiceStub
    public_agent: agent_pb2_grpc.AgentServiceStub
    logs: LogWatch
    api_token: str  # an admin token; ``channel`` sends it with every call
    closers: list[Callable[[], None]] = field(default_factory=list)

    def token(self, environment: str) -> str:
        return create_join_token(
            self.config.data_dir, environment, ttl_s=600.0, db_url=self.config.db_url
        )

    def assert_healthy(self) -> None:
        """Health reports SERVING and a normal ListRuns answers (on a fresh channel too, so
        a broken shared channel cannot hide a broken server)."""
        health = health_pb2_grpc.HealthStub(self.channel)
        status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=DEADLINE_S).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        self.control.ListRuns(control_pb2.ListRunsRequest(limit=5), timeout=DEADLINE_S)

    def client_channel(self, token: str | None) -> grpc.Channel:
        """A channel to the client listener sending ``token`` (none: no authorization)."""
        credentials = grpc.ssl_channel_credentials(root_certificates=self.ca_pem)
        if token is not None:
            credentials = grpc.composite_channel_credentials(
                credentials, grpc.access_token_call_credentials(token)
            )
        channel = grpc.secure_channel(self.plane.address, credentials, CLIENT_OPTIONS)
        self.closers.append(channel.close)
        return channel

    def agent_channel(self, key_pem: bytes, cert_pem: bytes, *, keep: bool = True) -> grpc.Channel:
        """A mutual-TLS channel to the agent listener; closed with the plane when ``keep``."""
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.ca_pem, private_key=key_pem, certificate_chain=cert_pem
        )
        channel = grpc.secure_channel(self.plane.agent_address, credentials, CLIENT_OPTIONS)
        if keep:
            self.closers.append(channel.close)
        return channel


def start_plane(
    data_dir: Path, *, max_bundle_bytes: int = 64 * 1024
) -> tuple[ThreadedControlPlane, FuzzPlane]:
    """Start a control plane on SQLite in ``data_dir``; the caller stops the server."""
    config = ServerConfig(
        data_dir=data_dir,
        listen="127.0.0.1:0",
        agent_listen="127.0.0.1:0",
        max_bundle_bytes=max_bundle_bytes,
        heartbeat_interval_s=0.5,
    )
    logs = LogWatch()
    logging.getLogger().addHandler(logs)
    server = ThreadedControlPlane(config)
    plane = server.start()
    ca_pem = plane.ca_file.read_bytes()
    token = create_api_token(data_dir, "admin", name="fuzz", db_url=config.db_url)
    credentials = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(root_certificates=ca_pem),
        grpc.access_token_call_credentials(token),
    )
    channel = grpc.secure_channel(plane.address, credentials, CLIENT_OPTIONS)
    fuzz = FuzzPlane(
        config,
        plane,
        ca_pem,
        channel,
        control_pb2_grpc.ControlServiceStub(channel),
        agent_pb2_grpc.AgentServiceStub(channel),
        logs,
        token,
    )
    fuzz.closers.append(lambda: logging.getLogger().removeHandler(logs))
    return server, fuzz
