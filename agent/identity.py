"""The agent's identity on disk: its private key, certificate, the CA it trusts, and who it is.

``data_dir`` holds ``agent.key`` (mode 0600; the key never leaves the machine), ``agent.crt``,
``ca.crt`` and ``identity.json`` (agent id, environment, control-plane address). The directory
itself is made 0700. Enrollment writes these; every later start loads them.

Certificate rotation (``agent.rotation``) replaces the key and certificate together: the new
pair is first written whole beside the old one (``*.next``), then moved into place. A crash at
any point leaves a matching pair, and the next load finishes an interrupted move.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meridian.core.durable import fsync_dir
from meridian.core.errors import NotFound, ValidationError

KEY_FILE = "agent.key"
CERT_FILE = "agent.crt"
CA_FILE = "ca.crt"
IDENTITY_FILE = "identity.json"
NEXT_KEY_FILE = "agent.key.next"
NEXT_CERT_FILE = "agent.crt.next"


@dataclass(frozen=True)
class AgentIdentity:
    agent_id: str
    environment: str
    control_plane: str
    key_pem: bytes
    cert_pem: bytes
    ca_pem: bytes
    # The mutual-TLS agent listener as last learned (docs/decisions/0001).
    agent_address: str = ""


def generate_key_and_csr(name: str) -> tuple[bytes, bytes]:
    # The CSR's subject is informational (the server names the agent); X.509 caps a common
    # name at 64 characters, so a longer agent name is cut here and kept whole on the server.
    """A fresh EC P-256 private key (PEM, PKCS#8) and a CSR for it (PEM).

    The CSR's subject is informational only; the control plane names the agent.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (name or "agent")[:64])]))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, csr.public_bytes(serialization.Encoding.PEM)


def save_identity(data_dir: Path, identity: AgentIdentity) -> None:
    """Write every identity file; the key is written 0600 and replaced atomically."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    _write_atomic(data_dir / KEY_FILE, identity.key_pem, 0o600)
    _write_atomic(data_dir / CERT_FILE, identity.cert_pem, 0o644)
    _write_atomic(data_dir / CA_FILE, identity.ca_pem, 0o644)
    meta = {
        "agent_id": identity.agent_id,
        "environment": identity.environment,
        "control_plane": identity.control_plane,
        "agent_address": identity.agent_address,
    }
    _write_atomic(data_dir / IDENTITY_FILE, json.dumps(meta, indent=2).encode() + b"\n", 0o644)


def save_rotated(data_dir: Path, key_pem: bytes, cert_pem: bytes) -> None:
    """Install a rotated key pair; ValidationError if the certificate is not for the key."""
    if not key_matches_certificate(key_pem, cert_pem):
        raise ValidationError("the rotated certificate is not for the key this agent made")
    data_dir = Path(data_dir)
    _write_atomic(data_dir / NEXT_KEY_FILE, key_pem, 0o600)
    _write_atomic(data_dir / NEXT_CERT_FILE, cert_pem, 0o644)
    fsync_dir(data_dir)
    _promote_next(data_dir)


def key_matches_certificate(key_pem: bytes, cert_pem: bytes) -> bool:
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
        cert = x509.load_pem_x509_certificate(cert_pem)
    except (ValueError, TypeError):
        return False
    return bool(key.public_key() == cert.public_key())


def certificate_not_after(cert_pem: bytes) -> datetime | None:
    try:
        return x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc
    except ValueError:
        return None


def _promote_next(data_dir: Path) -> None:
    """Move a complete ``*.next`` pair into place; drop an incomplete one (the old pair is
    then still whole, and the agent rotates again)."""
    next_key, next_cert = data_dir / NEXT_KEY_FILE, data_dir / NEXT_CERT_FILE
    if not (next_key.exists() or next_cert.exists()):
        return
    cert_pem = next_cert.read_bytes() if next_cert.is_file() else b""
    # Key first: between the two renames the pair on disk mismatches, and a crash there
    # leaves only the certificate to move, which the next load does.
    key_path = next_key if next_key.is_file() else data_dir / KEY_FILE
    if cert_pem and key_matches_certificate(key_path.read_bytes(), cert_pem):
        if key_path == next_key:
            os.replace(next_key, data_dir / KEY_FILE)
        os.replace(next_cert, data_dir / CERT_FILE)
        fsync_dir(data_dir)
        return
    next_key.unlink(missing_ok=True)
    next_cert.unlink(missing_ok=True)


def load_identity(data_dir: Path) -> AgentIdentity:
    """Load what enrollment stored; NotFound with the fix when the agent is not enrolled."""
    data_dir = Path(data_dir)
    if (data_dir / IDENTITY_FILE).is_file():
        _promote_next(data_dir)
    paths = [data_dir / n for n in (IDENTITY_FILE, KEY_FILE, CERT_FILE, CA_FILE)]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise NotFound(
            f"agent in {data_dir} is not enrolled (missing {', '.join(missing)}); "
            "run `meridian agent enroll` first"
        )
    try:
        meta = json.loads((data_dir / IDENTITY_FILE).read_text())
        return AgentIdentity(
            agent_id=str(meta["agent_id"]),
            environment=str(meta["environment"]),
            control_plane=str(meta.get("control_plane", "")),
            key_pem=(data_dir / KEY_FILE).read_bytes(),
            cert_pem=(data_dir / CERT_FILE).read_bytes(),
            ca_pem=(data_dir / CA_FILE).read_bytes(),
            agent_address=str(meta.get("agent_address", "")),
        )
    except (ValueError, KeyError) as exc:
        raise ValidationError(
            f"{data_dir / IDENTITY_FILE} is corrupt ({exc}); run `meridian agent enroll` again"
        ) from exc


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    # Create the temp file with its final mode so the key is never readable by others, even
    # for an instant, then rename so a crash leaves either the old or the new file.
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
