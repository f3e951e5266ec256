"""How test clients and fake servers authenticate: throwaway TLS material and API tokens.

- ``TestPKI``: a throwaway CA, a server certificate for localhost/127.0.0.1 signed by it,
  and CSR signing (what the control plane does when an agent enrolls).
- ``Tls`` / ``make_tls()``: just the PEMs a fake TLS server needs (CA, certificate, key).
- ``with_bearer``: a gRPC channel that presents an API token on every call, for raw stubs.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# ---- TLS material -----------------------------------------------------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class TestPKI:
    """A throwaway CA, a server certificate for loopback, and CSR signing for agents."""

    __test__ = False  # a helper, not a test class, despite its name

    def __init__(self) -> None:
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        name = _name("test-ca")
        self.ca_cert = (
            self._builder(name, name, self.ca_key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(self.ca_key, hashes.SHA256())
        )
        self.ca_pem = self.ca_cert.public_bytes(serialization.Encoding.PEM)
        server_key = ec.generate_private_key(ec.SECP256R1())
        server_cert = (
            self._builder(_name("localhost"), name, server_key.public_key())
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self.ca_key, hashes.SHA256())
        )
        self.server_key_pem = _pem_key(server_key)
        self.server_cert_pem = server_cert.public_bytes(serialization.Encoding.PEM)

    def _builder(self, subject: x509.Name, issuer: x509.Name, public_key: Any) -> Any:
        # Valid from a little in the past, so clock skew between processes never matters.
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
        )

    def sign_csr(self, csr_pem: bytes, common_name: str) -> bytes:
        """A client certificate for ``common_name`` (e.g. an agent id) on the CSR's key."""
        csr = x509.load_pem_x509_csr(csr_pem)
        cert = (
            self._builder(_name(common_name), self.ca_cert.subject, csr.public_key())
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self.ca_key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM)

    @property
    def tls(self) -> Tls:
        return Tls(ca_pem=self.ca_pem, cert_pem=self.server_cert_pem, key_pem=self.server_key_pem)


@dataclass(frozen=True)
class Tls:
    """The PEMs of a fake TLS server: the CA clients trust, its certificate and its key."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes


def make_tls() -> Tls:
    """A throwaway CA and a server certificate for localhost / 127.0.0.1 signed by it."""
    return TestPKI().tls


# ---- API tokens -------------------------------------------------------------------------------


class _Bearer(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, details: Any) -> Any:
        metadata = [*(details.metadata or ()), self._header]
        return (
            details._replace(metadata=metadata)
            if hasattr(details, "_replace")
            else _Details(details, metadata)
        )

    def intercept_unary_unary(self, continuation: Callable, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Callable, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Callable, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Callable, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


class _Details(grpc.ClientCallDetails):
    def __init__(self, base: Any, metadata: list[tuple[str, str]]) -> None:
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = metadata
        self.credentials = base.credentials
        self.wait_for_ready = getattr(base, "wait_for_ready", None)
        self.compression = getattr(base, "compression", None)


def with_bearer(channel: grpc.Channel, token: str) -> grpc.Channel:
    return grpc.intercept_channel(channel, _Bearer(token))
