"""What grpcio really does with our CA's certificates, over loopback TLS.

These tests pin gRPC's behaviour that the security design depends on:

* ``ssl_server_credentials(..., require_client_auth=False)`` does NOT request a client
  certificate at all: a client certificate is never seen by the handler (not even a valid one),
  so one port cannot serve both mTLS agents and server-TLS-only CLI clients.
* ``require_client_auth=True`` verifies the client chain against ``root_certificates`` and the
  handler sees the certificate in ``context.auth_context()``; clients without a certificate or
  with one from another CA fail the handshake.
* One ``grpc.aio`` server can listen on two ports with different credentials, which is the
  working layout: a server-TLS port (CLI, Enroll) and an mTLS port (agent streams).
* Dialling ``127.0.0.1:PORT`` verifies the server certificate's IP SAN.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from control_plane.auth.ca import CertificateAuthority
from control_plane.auth.identity import AgentIdentity, identity_from_auth_context

METHOD = "/meridian.test.Probe/WhoAmI"


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _agent_credentials(ca: CertificateAuthority, agent_id: str) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "ignored")]))
        .sign(key, hashes.SHA256())
    )
    cert = ca.sign_agent_csr(
        csr.public_bytes(serialization.Encoding.PEM), agent_id=agent_id, environment="aws-demo"
    )
    return _key_pem(key), cert


class Probe:
    """A handler that records the identity each call was made with."""

    def __init__(self) -> None:
        self.identities: list[AgentIdentity | None] = []

    async def who_am_i(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        identity = identity_from_auth_context(context.auth_context())
        self.identities.append(identity)
        return b"anonymous" if identity is None else identity.agent_id.encode()

    def handler(self) -> grpc.GenericRpcHandler:
        method = grpc.unary_unary_rpc_method_handler(self.who_am_i)
        return grpc.method_handlers_generic_handler("meridian.test.Probe", {"WhoAmI": method})


@asynccontextmanager
async def serving(probe: Probe, *credentials: grpc.ServerCredentials) -> AsyncIterator[list[int]]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((probe.handler(),))
    ports = [server.add_secure_port("127.0.0.1:0", creds) for creds in credentials]
    await server.start()
    try:
        yield ports
    finally:
        await server.stop(None)


async def call(target: str, creds: grpc.ChannelCredentials) -> bytes | grpc.StatusCode:
    async with grpc.aio.secure_channel(target, creds) as channel:
        try:
            method = channel.unary_unary(
                METHOD, request_serializer=None, response_deserializer=None
            )
            response: bytes = await method(b"", timeout=5)
            return response
        except grpc.aio.AioRpcError as exc:
            return exc.code()


@dataclass(frozen=True)
class Pki:
    ca: CertificateAuthority
    server_pair: tuple[bytes, bytes]  # (key, certificate chain) as grpc wants them
    clients: dict[str, tuple[bytes, bytes]]  # name -> (key, certificate)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    base = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority.load_or_create(base / "ca")
    other = CertificateAuthority.load_or_create(base / "other-ca")
    cert_path, key_path = ca.ensure_server_certificate(base / "server", ["cp.example.internal"])
    return Pki(
        ca=ca,
        server_pair=(key_path.read_bytes(), cert_path.read_bytes()),
        clients={
            "agent": _agent_credentials(ca, "agent-1"),
            "foreign_agent": _agent_credentials(other, "intruder"),
        },
    )


def _server_creds(pki: Pki, *, require: bool) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [pki.server_pair], root_certificates=pki.ca.certificate_pem, require_client_auth=require
    )


def _client(pki: Pki, who: str | None) -> grpc.ChannelCredentials:
    if who is None:
        return grpc.ssl_channel_credentials(root_certificates=pki.ca.certificate_pem)
    key, cert = pki.clients[who]
    return grpc.ssl_channel_credentials(pki.ca.certificate_pem, key, cert)


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


def test_optional_client_auth_port_never_sees_client_certificates(pki: Pki) -> None:
    probe = Probe()

    async def scenario() -> None:
        async with serving(probe, _server_creds(pki, require=False)) as (port,):
            target = f"127.0.0.1:{port}"
            # (a) server-TLS-only client works
            assert await call(target, _client(pki, None)) == b"anonymous"
            # (b) a valid agent certificate is NOT requested, so the handler cannot see it
            assert await call(target, _client(pki, "agent")) == b"anonymous"
            # (c) a foreign certificate is not requested either: never authenticated
            assert await call(target, _client(pki, "foreign_agent")) == b"anonymous"

    run(scenario)
    assert probe.identities == [None, None, None]


def test_required_client_auth_port_authenticates_agents(pki: Pki) -> None:
    probe = Probe()

    async def scenario() -> None:
        async with serving(probe, _server_creds(pki, require=True)) as (port,):
            target = f"127.0.0.1:{port}"
            assert await call(target, _client(pki, "agent")) == b"agent-1"
            assert await call(target, _client(pki, None)) == grpc.StatusCode.UNAVAILABLE
            assert await call(target, _client(pki, "foreign_agent")) == grpc.StatusCode.UNAVAILABLE

    run(scenario)
    assert len(probe.identities) == 1
    identity = probe.identities[0]
    assert identity is not None
    assert (identity.agent_id, identity.environment) == ("agent-1", "aws-demo")


def test_one_server_two_ports_serves_cli_and_agents(pki: Pki) -> None:
    probe = Probe()

    async def scenario() -> None:
        tls_only = _server_creds(pki, require=False)
        mtls = _server_creds(pki, require=True)
        async with serving(probe, tls_only, mtls) as (public_port, agent_port):
            assert await call(f"127.0.0.1:{public_port}", _client(pki, None)) == b"anonymous"
            assert await call(f"127.0.0.1:{agent_port}", _client(pki, "agent")) == b"agent-1"
            refused = await call(f"127.0.0.1:{agent_port}", _client(pki, None))
            assert refused == grpc.StatusCode.UNAVAILABLE

    run(scenario)


def _server_pair_without_ip_san(ca: CertificateAuthority) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "other.example")]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("other.example")]), False)
        .sign(ca.private_key, hashes.SHA256())
    )
    return _key_pem(key), cert.public_bytes(serialization.Encoding.PEM)


def test_dialling_an_ip_verifies_the_ip_san(pki: Pki) -> None:
    probe = Probe()

    async def scenario() -> None:
        good = _server_creds(pki, require=False)
        bad = grpc.ssl_server_credentials([_server_pair_without_ip_san(pki.ca)])
        async with serving(probe, good, bad) as (good_port, bad_port):
            assert await call(f"127.0.0.1:{good_port}", _client(pki, None)) == b"anonymous"
            assert await call(f"localhost:{good_port}", _client(pki, None)) == b"anonymous"
            wrong_name = await call(f"127.0.0.1:{bad_port}", _client(pki, None))
            assert wrong_name == grpc.StatusCode.UNAVAILABLE

    run(scenario)


def test_server_certificate_from_another_ca_is_refused(pki: Pki, tmp_path: Path) -> None:
    other = CertificateAuthority.load_or_create(tmp_path / "ca")
    probe = Probe()

    async def scenario() -> None:
        async with serving(probe, _server_creds(pki, require=False)) as (port,):
            creds = grpc.ssl_channel_credentials(root_certificates=other.certificate_pem)
            assert await call(f"127.0.0.1:{port}", creds) == grpc.StatusCode.UNAVAILABLE

    run(scenario)
    assert probe.identities == []
