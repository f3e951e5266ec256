"""A fake Azure Resource Manager endpoint for Container Instances, over HTTPS, for contract tests.

No emulator exists for ACI, so this serves the routes the official ``azure-mgmt-containerinstance``
client calls (container group PUT with an ``Azure-AsyncOperation`` long-running operation, GET,
DELETE, ``containers/{name}/logs``) plus an Entra-ID-like token endpoint that a real
``azure-identity`` ``ClientSecretCredential`` talks to. azure-core refuses to send bearer tokens
over plain HTTP, so the server speaks TLS with a self-signed certificate for 127.0.0.1 generated
here (``ca_path`` is the bundle to trust). ARM routes demand a token this fake issued.

Container groups either follow a script (``Script``: exit code, log text, run time) or, with
``run_commands=True``, run their container's command as a local subprocess with the container's
environment, so real step code runs and its real exit code and output come back through the API.
Every request is recorded (method, path, query, JSON body, bearer token).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

API_VERSION = "2023-05-01"
_GROUP_TYPE = "Microsoft.ContainerInstance/containerGroups"


@dataclass
class Script:
    """How a simulated container behaves: runs ``duration_s``, prints ``logs``, exits."""

    exit_code: int = 0
    logs: str = ""
    duration_s: float = 0.2


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    token: str | None


@dataclass
class _Group:
    name: str
    resource_group: str
    body: dict[str, Any]
    secrets: dict[str, str]  # secureValue env vars: accepted, never returned by GET
    script: Script
    started: float = field(default_factory=time.monotonic)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    ops_polled: int = 0

    def outcome(self) -> tuple[bool, int | None]:
        """(terminated, exit code)."""
        if self.proc is not None:
            rc = self.proc.poll()
            if rc is None:
                return False, None
            return True, rc if rc >= 0 else 128 - rc  # killed by a signal: like a container
        if time.monotonic() - self.started < self.script.duration_s:
            return False, None
        return True, self.script.exit_code

    def log_text(self) -> str:
        if self.log_path is not None:
            try:
                return self.log_path.read_text(encoding="utf-8", errors="replace")
            except FileNotFoundError:
                return ""
        return self.script.logs

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that is its own CA; returns (cert/CA bundle, key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meridian-arm-fake")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "arm-fake-ca.pem", directory / "arm-fake-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _iso(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).isoformat().replace("+00:00", "Z")


class AzureArmFake:
    """The fake ARM + token endpoint. Use as a context manager; it stops what it started."""

    def __init__(
        self,
        directory: Path,
        *,
        subscription_id: str = "00000000-0000-0000-0000-000000000001",
        resource_groups: tuple[str, ...] = ("rg-meridian",),
        tenant_id: str = "meridian-tenant",
        client_id: str = "meridian-client",
        client_secret: str = "meridian-secret",
        run_commands: bool = False,
    ) -> None:
        self.directory = directory
        self.subscription_id = subscription_id
        self.resource_groups = set(resource_groups)
        self.tenant_id, self.client_id, self.client_secret = tenant_id, client_id, client_secret
        self.run_commands = run_commands
        self.script = Script()  # what the next simulated groups do
        self.requests: list[Recorded] = []
        self.tokens_issued: list[str] = []
        self.groups: dict[str, _Group] = {}
        self.deleted: list[str] = []
        self._errors: list[tuple[str, str, int, str, str]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.ca_path, self._key_path = _self_signed(directory)

    # -- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> AzureArmFake:
        fake = self

        class Handler(_Handler):
            arm = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.ca_path, self._key_path)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        with self._lock:
            for group in self.groups.values():
                group.kill()

    @property
    def base_url(self) -> str:
        assert self._server is not None, "start the fake first (with ...)"
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    @property
    def authority(self) -> str:
        return self.base_url

    # -- test controls -------------------------------------------------------------------

    def fail_next(
        self, method: str, status: int, code: str, message: str, path_part: str = ""
    ) -> None:
        """Answer the next ``method`` request whose path contains ``path_part`` with an error."""
        with self._lock:
            self._errors.append((method, path_part, status, code, message))

    def bodies(self, method: str) -> list[Any]:
        return [r.body for r in self.requests if r.method == method]

    def calls(self, method: str, path_part: str = "") -> list[Recorded]:
        return [r for r in self.requests if r.method == method and path_part in r.path]

    def secret_env(self, name: str) -> dict[str, str]:
        """The secureValue env vars a group was created with (never returned by GET)."""
        return dict(self.groups[name].secrets)

    # -- behaviour -----------------------------------------------------------------------

    def injected_error(self, method: str, path: str) -> tuple[int, str, str] | None:
        with self._lock:
            for i, (m, part, status, code, message) in enumerate(self._errors):
                if m == method and part in path:
                    del self._errors[i]
                    return status, code, message
        return None

    def group_path(self, rg: str, name: str) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{rg}"
            f"/providers/{_GROUP_TYPE}/{name}"
        )

    def create(self, rg: str, name: str, body: dict[str, Any]) -> _Group:
        secrets: dict[str, str] = {}
        env: dict[str, str] = {}
        container = body["properties"]["containers"][0]["properties"]
        for var in container.get("environmentVariables", []):
            if "secureValue" in var:
                secrets[var["name"]] = var["secureValue"]
            env[var["name"]] = var.get("secureValue", var.get("value", ""))
        # Stored as ARM stores it: secrets (env secureValue, registry password) are write-only.
        stored = json.loads(json.dumps(body))
        for var in stored["properties"]["containers"][0]["properties"].get(
            "environmentVariables", []
        ):
            var.pop("secureValue", None)
        for reg in stored["properties"].get("imageRegistryCredentials", []) or []:
            reg.pop("password", None)
        group = _Group(name, rg, stored, secrets, Script(**vars(self.script)))
        if self.run_commands:
            group.log_path = self.directory / f"{name}.log"
            group.proc = self._spawn(container["command"], env, group.log_path)
        with self._lock:
            old = self.groups.pop(name, None)
            if old is not None:
                old.kill()
            self.groups[name] = group
        return group

    def _spawn(
        self, command: list[str], env: dict[str, str], log_path: Path
    ) -> subprocess.Popen[bytes]:
        bin_dir = str(Path(sys.executable).parent)  # where meridian-step is installed
        full_env = {"PATH": bin_dir + os.pathsep + os.defpath, "HOME": str(self.directory), **env}
        with open(log_path, "wb") as out:  # a container log interleaves stdout and stderr
            return subprocess.Popen(
                command,
                env=full_env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.directory,
                start_new_session=True,
            )

    def view(self, group: _Group, provisioning: str = "Succeeded") -> dict[str, Any]:
        """The group as ARM's GET returns it, with live instance views."""
        body = json.loads(json.dumps(group.body))
        ended, exit_code = group.outcome()
        current: dict[str, Any] = {"state": "Running", "startTime": _iso(time.time())}
        if ended:
            current = {
                "state": "Terminated",
                "exitCode": exit_code,
                "detailStatus": "Completed" if exit_code == 0 else "Error",
                "startTime": _iso(time.time()),
                "finishTime": _iso(time.time()),
            }
        body["properties"]["containers"][0]["properties"]["instanceView"] = {
            "restartCount": 0,
            "currentState": current,
            "events": [],
        }
        state = "Running" if not ended else ("Succeeded" if exit_code == 0 else "Failed")
        body["properties"]["instanceView"] = {"state": state, "events": []}
        body["properties"]["provisioningState"] = provisioning
        body.update(
            id=self.group_path(group.resource_group, group.name),
            name=group.name,
            type=_GROUP_TYPE,
        )
        return body

    def delete(self, rg: str, name: str) -> bool:
        with self._lock:
            group = self.groups.get(name)
            if group is None or group.resource_group != rg:
                return False
            del self.groups[name]
            self.deleted.append(name)
        group.kill()
        return True


class _Handler(BaseHTTPRequestHandler):
    arm: AzureArmFake
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes: without this, Nagle + delayed ACK add ~40 ms
        # to every keep-alive request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        pass

    # -- plumbing --------------------------------------------------------------------------

    def _send(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        raw = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.send_header("x-ms-request-id", str(uuid.uuid4()))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(raw)

    def _error(self, status: int, code: str, message: str) -> None:
        self._send(status, {"error": {"code": code, "message": message}})

    def _read(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        arm = self.arm
        url = urlsplit(self.path)
        raw = self._read()
        query = parse_qs(url.query)
        auth = self.headers.get("Authorization", "")
        token = auth[len("Bearer ") :] if auth.startswith("Bearer ") else None
        try:
            body: Any = (
                json.loads(raw)
                if raw and "json" in (self.headers["Content-Type"] or "")
                else raw.decode()
            )
        except ValueError:
            body = raw.decode(errors="replace")
        arm.requests.append(Recorded(method, url.path, query, body, token))
        parts = [p for p in url.path.split("/") if p]
        if parts[:1] == [arm.tenant_id]:
            self._identity(method, parts[1:], body)
            return
        if token is None or token not in arm.tokens_issued:
            self._error(
                401, "AuthenticationFailed", "Authentication failed: no valid bearer token."
            )
            return
        if query.get("api-version") != [API_VERSION]:
            self._error(
                400, "MissingApiVersionParameter", "The api-version query parameter is required."
            )
            return
        injected = arm.injected_error(method, url.path)
        if injected is not None:
            self._error(*injected)
            return
        self._arm(method, parts, body, query)

    # -- Entra ID (token endpoint + the discovery document MSAL reads) ---------------------

    def _identity(self, method: str, rest: list[str], body: Any) -> None:
        arm = self.arm
        if method == "GET" and rest == ["v2.0", ".well-known", "openid-configuration"]:
            base = f"{arm.base_url}/{arm.tenant_id}"
            self._send(
                200,
                {
                    "token_endpoint": f"{base}/oauth2/v2.0/token",
                    "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                    "issuer": f"{base}/v2.0",
                },
            )
            return
        if method != "POST" or rest != ["oauth2", "v2.0", "token"]:
            self._send(404, {"error": "not_found"})
            return
        form = {k: v[0] for k, v in parse_qs(body if isinstance(body, str) else "").items()}
        if form.get("client_id") != arm.client_id or form.get("client_secret") != arm.client_secret:
            self._send(
                401,
                {
                    "error": "invalid_client",
                    "error_description": "AADSTS7000215: Invalid client secret.",
                },
            )
            return
        token = f"fake-token-{uuid.uuid4().hex}"
        arm.tokens_issued.append(token)
        self._send(
            200,
            {
                "token_type": "Bearer",
                "expires_in": 3600,
                "ext_expires_in": 3600,
                "access_token": token,
            },
        )

    # -- ARM -------------------------------------------------------------------------------

    def _arm(self, method: str, parts: list[str], body: Any, query: dict[str, list[str]]) -> None:
        arm = self.arm
        # subscriptions/{sub}/providers/Microsoft.ContainerInstance/locations/{loc}/operations/{id}
        if len(parts) == 8 and parts[2] == "providers" and parts[6] == "operations":
            self._operation(parts[7])
            return
        if len(parts) < 8 or parts[0] != "subscriptions" or parts[1] != arm.subscription_id:
            self._error(404, "InvalidResourceType", f"no route for /{'/'.join(parts)}")
            return
        rg, name, rest = parts[3], parts[7], parts[8:]
        if rg not in arm.resource_groups:
            self._error(404, "ResourceGroupNotFound", f"Resource group '{rg}' could not be found.")
            return
        if rest[:1] == ["containers"] and rest[2:] == ["logs"] and method == "GET":
            self._logs(rg, name, rest[1], query)
        elif not rest and method == "PUT":
            self._put(rg, name, body)
        elif not rest and method == "GET":
            group = arm.groups.get(name)
            if group is None or group.resource_group != rg:
                self._not_found(rg, name)
            else:
                self._send(200, arm.view(group))
        elif not rest and method == "DELETE":
            if not arm.delete(rg, name):
                self._send(204)
                return
            self._send(202, None, self._async_op(f"delete-{name}", polled_once=True))
        else:
            self._error(405, "MethodNotAllowed", f"{method} /{'/'.join(parts)}")

    def _not_found(self, rg: str, name: str) -> None:
        self._error(
            404,
            "ResourceNotFound",
            f"The Resource '{_GROUP_TYPE}/{name}' under resource group '{rg}' was not found.",
        )

    def _async_op(self, op_id: str, polled_once: bool = False) -> dict[str, str]:
        loc = "westeurope"
        url = (
            f"{self.arm.base_url}/subscriptions/{self.arm.subscription_id}/providers/"
            f"Microsoft.ContainerInstance/locations/{loc}/operations/{op_id}"
            f"?api-version={API_VERSION}"
        )
        return {"Azure-AsyncOperation": url, "Retry-After": "0"}

    def _operation(self, op_id: str) -> None:
        arm = self.arm
        if op_id.startswith("delete-"):
            self._send(200, {"id": op_id, "status": "Succeeded"})
            return
        group = arm.groups.get(op_id)
        if group is None:
            self._send(
                200,
                {"id": op_id, "status": "Failed", "error": {"code": "Gone", "message": "deleted"}},
            )
            return
        group.ops_polled += 1  # InProgress once, so the client really polls the operation
        self._send(
            200, {"id": op_id, "status": "InProgress" if group.ops_polled < 2 else "Succeeded"}
        )

    def _put(self, rg: str, name: str, body: Any) -> None:
        try:
            props = body["properties"]
            assert props["containers"] and props["osType"] and body["location"]
            assert props["containers"][0]["properties"]["image"]
        except (KeyError, TypeError, AssertionError, IndexError):
            self._error(400, "InvalidRequestContent", "The request content was invalid.")
            return
        group = self.arm.create(rg, name, body)
        self._send(201, self.arm.view(group, provisioning="Pending"), self._async_op(name))

    def _logs(self, rg: str, name: str, container: str, query: dict[str, list[str]]) -> None:
        group = self.arm.groups.get(name)
        if group is None or group.resource_group != rg:
            self._not_found(rg, name)
            return
        if container != group.body["properties"]["containers"][0]["name"]:
            self._error(404, "ContainerNotFound", f"Container '{container}' not found in '{name}'.")
            return
        text = group.log_text()
        if "tail" in query:
            text = "\n".join(text.splitlines()[-int(query["tail"][0]) :]) + "\n"
        self._send(200, {"content": text})
