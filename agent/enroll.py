"""One-time enrollment: trade a join token and a CSR for this agent's certificate.

Runs synchronously (it is a CLI step). The key pair is generated here and the private key is
written only to ``data_dir``; nothing is stored unless the control plane accepts the token.
The call uses server-only TLS, since the agent has no certificate yet.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509

from agent import convert
from agent.endpoint import join_address
from agent.identity import AgentIdentity, generate_key_and_csr, save_identity
from meridian.core.errors import (
    ConnectionFailed,
    MeridianError,
    NotFound,
    PermissionDenied,
    ValidationError,
)

ENROLL_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class EnrollResult:
    agent_id: str
    environment: str


def enroll(
    control_plane: str,
    ca_file: Path,
    token: str,
    data_dir: Path,
    name: str | None = None,
) -> EnrollResult:
    """Enroll this agent with the control plane at ``control_plane`` ("host:port").

    Raises:
        ValidationError: the CA file is unreadable, or the server rejected the request.
        PermissionDenied: the join token is unknown, used or expired.
        ConnectionFailed: the control plane cannot be reached or its identity is wrong.
    """
    ca_pem = read_ca_file(ca_file)
    agent_name = name or socket.gethostname()
    key_pem, csr_pem = generate_key_and_csr(agent_name)
    credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    with grpc.secure_channel(control_plane, credentials) as channel:
        stub = convert.new_stub(channel)
        try:
            response = stub.Enroll(
                convert.enroll_request(token, csr_pem, agent_name), timeout=ENROLL_TIMEOUT_S
            )
        except grpc.RpcError as exc:
            raise map_rpc_error(exc, control_plane, ca_file) from exc
    agent_id, environment, cert_pem, server_ca_pem, agent_address = (
        convert.enroll_response_from_proto(response)
    )
    identity = AgentIdentity(
        agent_id=agent_id,
        environment=environment,
        control_plane=control_plane,
        key_pem=key_pem,
        cert_pem=cert_pem,
        # Trust what the server says its CA is, falling back to the file the operator gave us.
        ca_pem=server_ca_pem or ca_pem,
        agent_address=join_address(control_plane, agent_address) if agent_address else "",
    )
    save_identity(Path(data_dir), identity)
    return EnrollResult(agent_id=agent_id, environment=environment)


def map_rpc_error(exc: grpc.RpcError, target: str, ca_file: Path | None = None) -> MeridianError:
    """Our error for a failed RPC, keeping the server's message (it says what to fix)."""
    code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = (exc.details() if isinstance(exc, grpc.Call) else None) or str(exc)
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return PermissionDenied(details)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return ValidationError(details)
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(details)
    if code == grpc.StatusCode.UNAVAILABLE and ca_file is not None and _tls_failure(details):
        return ConnectionFailed(
            f"the control plane at {target} did not present a certificate signed by the CA in "
            f"{ca_file}; check --ca-file (use the CA that `meridian server start` printed)"
        )
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return ConnectionFailed(f"cannot reach control plane at {target}: {details}")
    return MeridianError(f"control plane at {target} failed: {code.name}: {details}")


def _tls_failure(details: str) -> bool:
    lowered = details.lower()
    return any(mark in lowered for mark in ("certificate", "handshake", "ssl", "tls"))


def read_ca_file(ca_file: Path) -> bytes:
    """The CA certificate(s) in ``ca_file``; ValidationError naming the file otherwise."""
    try:
        data = Path(ca_file).read_bytes()
    except OSError as exc:
        raise ValidationError(f"cannot read CA file {ca_file}: {exc.strerror or exc}") from exc
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ValidationError(
            f"CA file {ca_file} holds no PEM certificate; pass the ca.crt the control plane "
            "printed at start"
        ) from exc
    return data
