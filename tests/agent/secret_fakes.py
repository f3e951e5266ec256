"""Contract fakes of Google Secret Manager and Azure Key Vault for the secret resolver tests.

Each fake is a real HTTP(S) server on loopback, in a thread, that implements the one call the
resolver makes, as the public REST reference documents it (paths, query, auth header, success
and error bodies). The real auth libraries drive the requests: google-auth's service-account
credentials fetch their token from the GCP fake's token endpoint (the fake checks the signed
JWT assertion), and azure-core's bearer token policy authenticates to the Azure fake, which
speaks HTTPS with a certificate from a throwaway test CA because azure-core refuses to send bearer
tokens over plain HTTP. No emulator exists for either service, hence "contract" fakes.
"""

from __future__ import annotations

import base64
import json
import secrets
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.tls import TestPKI

# ---- plumbing -----------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    """Hands every request to the owning fake's ``handle(method, path, query, headers, body)``."""

    server: _Server

    def _dispatch(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        status, payload = self.server.fake.handle(
            method,
            url.path,
            parse_qs(url.query),
            {k.lower(): v for k, v in self.headers.items()},
            body,
        )
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, fake: Any) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.fake = fake


@contextmanager
def serving(fake: Any, tls: ssl.SSLContext | None = None) -> Iterator[int]:
    """Serve ``fake`` on a loopback port (HTTPS when ``tls`` is given); yields the port."""
    server = _Server(fake)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, name="secret-fake", daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _pem_private(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def self_signed_tls(directory: Path) -> tuple[ssl.SSLContext, Path]:
    """A server TLS context for localhost/127.0.0.1 and the CA bundle that trusts it."""
    pki = TestPKI()
    cert_path, key_path = directory / "fake-kv.pem", directory / "fake-kv.key"
    ca_path = directory / "fake-kv-ca.pem"
    cert_path.write_bytes(pki.server_cert_pem)
    key_path.write_bytes(pki.server_key_pem)
    ca_path.write_bytes(pki.ca_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return context, ca_path


# ---- Google Secret Manager ------------------------------------------------------------------

GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"


def _google_error(code: int, status: str, message: str) -> tuple[int, dict[str, Any]]:
    return code, {"error": {"code": code, "message": message, "status": status}}


@dataclass
class GcpSecretManagerFake:
    """``POST /token`` (OAuth JWT-bearer grant) and ``GET /v1/{version}:access``.

    ``versions[(project, secret)]`` lists payloads, version 1 first; ``denied`` secrets answer
    403 as IAM would without ``roles/secretmanager.secretAccessor``.
    """

    versions: dict[tuple[str, str], list[bytes]] = field(default_factory=dict)
    denied: set[tuple[str, str]] = field(default_factory=set)
    public_key_pem: bytes = b""
    token_uri: str = ""
    tokens: set[str] = field(default_factory=set)
    accessed: list[str] = field(default_factory=list)

    def add(self, project: str, secret: str, value: bytes) -> None:
        self.versions.setdefault((project, secret), []).append(value)

    def handle(
        self, method: str, path: str, query: Any, headers: dict[str, str], body: bytes
    ) -> tuple[int, Any]:
        if method == "POST" and path == "/token":
            return self._token(body)
        if method == "GET" and path.startswith("/v1/") and path.endswith(":access"):
            if headers.get("authorization", "").removeprefix("Bearer ") not in self.tokens:
                return _google_error(401, "UNAUTHENTICATED", "Request had invalid credentials.")
            return self._access(path[len("/v1/") : -len(":access")])
        return _google_error(404, "NOT_FOUND", f"no route {method} {path}")

    def _token(self, body: bytes) -> tuple[int, Any]:
        from google.auth import jwt  # the verifier google-auth itself ships

        form = parse_qs(body.decode())
        if form.get("grant_type") != ["urn:ietf:params:oauth:grant-type:jwt-bearer"]:
            return 400, {"error": "unsupported_grant_type"}
        try:
            # google-auth signs for Google's token endpoint whatever token_uri it posts to.
            claims = jwt.decode(
                form["assertion"][0], certs=self.public_key_pem, audience=GOOGLE_TOKEN_AUDIENCE
            )
        except Exception as exc:
            return 400, {"error": "invalid_grant", "error_description": str(exc)}
        if "cloud-platform" not in str(claims.get("scope", "")):
            return 400, {"error": "invalid_scope"}
        token = f"ya29.fake-{secrets.token_hex(8)}"
        self.tokens.add(token)
        return 200, {"access_token": token, "expires_in": 3600, "token_type": "Bearer"}

    def _access(self, name: str) -> tuple[int, Any]:
        parts = name.split("/")
        if len(parts) != 6 or parts[0::2] != ["projects", "secrets", "versions"]:
            return _google_error(400, "INVALID_ARGUMENT", f"Invalid resource name {name}")
        project, secret, version = parts[1], parts[3], parts[5]
        self.accessed.append(name)
        if (project, secret) in self.denied:
            return _google_error(
                403,
                "PERMISSION_DENIED",
                f"Permission 'secretmanager.versions.access' denied for resource '{name}'",
            )
        payloads = self.versions.get((project, secret), [])
        number = len(payloads) if version == "latest" else int(version) if version.isdigit() else 0
        if not 1 <= number <= len(payloads):
            return _google_error(404, "NOT_FOUND", f"Secret [{name}] not found or has no versions.")
        data = base64.b64encode(payloads[number - 1]).decode()
        resolved = f"projects/{project}/secrets/{secret}/versions/{number}"
        return 200, {"name": resolved, "payload": {"data": data}}


def gcp_service_account(fake: GcpSecretManagerFake, token_uri: str) -> Any:
    """Real google-auth service-account credentials whose token endpoint is the fake's."""
    from google.oauth2 import service_account

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    fake.public_key_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    fake.token_uri = token_uri
    info = {
        "type": "service_account",
        "project_id": "proj",
        "private_key_id": "k1",
        "private_key": _pem_private(key).decode(),
        "client_email": "agent@proj.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": token_uri,
    }
    return service_account.Credentials.from_service_account_info(
        info, scopes=["https://www.googleapis.com/auth/cloud-platform"]
    )


# ---- Azure Key Vault ------------------------------------------------------------------------


@dataclass
class AzureKeyVaultFake:
    """``GET /{vault}/secrets/{name}[/{version}]?api-version=7.4`` with a bearer token.

    The path carries the vault name because a loopback fake cannot have one host per vault;
    the resolver is pointed at it with ``vault_url="https://localhost:PORT/{vault}"``.
    """

    token: str = "fake-kv-token"
    secrets: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    disabled: set[tuple[str, str]] = field(default_factory=set)
    requests: list[str] = field(default_factory=list)

    def add(self, vault: str, name: str, value: str) -> None:
        self.secrets.setdefault((vault, name), []).append(value)

    def handle(
        self, method: str, path: str, query: Any, headers: dict[str, str], body: bytes
    ) -> tuple[int, Any]:
        if headers.get("authorization") != f"Bearer {self.token}":
            return _kv_error(401, "Unauthorized", "AKV10000: Request is missing a Bearer token.")
        if query.get("api-version") != ["7.4"]:
            return _kv_error(400, "BadParameter", "The specified version is not supported.")
        parts = path.strip("/").split("/")
        if method != "GET" or len(parts) not in (3, 4) or parts[1] != "secrets":
            return _kv_error(404, "NotFound", f"no route {method} {path}")
        vault, name = parts[0], parts[2]
        self.requests.append(path)
        versions = self.secrets.get((vault, name), [])
        index = len(versions) - 1 if len(parts) == 3 else _version_index(parts[3])
        if (vault, name) in self.disabled:
            return _kv_error(403, "SecretDisabled", f"Operation get is not allowed on {name}.")
        if not 0 <= index < len(versions):
            return _kv_error(
                404,
                "SecretNotFound",
                f"A secret with (name/id) {name} was not found in this key vault.",
            )
        secret_id = f"https://{vault}.vault.azure.net/secrets/{name}/v{index + 1:031d}"
        return 200, {"value": versions[index], "id": secret_id, "attributes": {"enabled": True}}


def _version_index(version: str) -> int:
    return int(version[1:]) - 1 if version.startswith("v") and version[1:].isdigit() else -1


def _kv_error(status: int, code: str, message: str) -> tuple[int, Any]:
    return status, {"error": {"code": code, "message": message}}


class StaticTokenCredential:
    """A minimal azure-core ``TokenCredential`` that records the scopes it was asked for."""

    def __init__(self, token: str) -> None:
        self._token = token
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        self.scopes.append(scopes)
        return AccessToken(self._token, int(time.time()) + 3600)
