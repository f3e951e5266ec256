"""The control plane's certificate authority.

This module owns the CA key pair on disk (``ca.crt`` / ``ca.key``), the server certificate the
gRPC port presents, and the short-lived client certificates issued to agents from their CSRs.
Agent identity is carried in a URI SAN (``spiffe://meridian/environment/<env>/agent/<id>``);
``identity.py`` reads it back on the server side.

EC P-256 everywhere: BoringSSL (inside grpcio) supports it for TLS 1.2 and 1.3, keys are small,
and signing is cheap enough to issue certificates on every enrollment and rotation.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meridian.core.clock import utcnow
from meridian.core.errors import ValidationError

CA_VALIDITY = timedelta(days=3650)
SERVER_VALIDITY = timedelta(days=365)
SERVER_RENEW_BEFORE = timedelta(days=30)
DEFAULT_AGENT_VALIDITY = timedelta(hours=24)
# Issued certificates start a little in the past so a peer whose clock runs slightly behind
# does not reject a certificate that was issued a second ago.
CLOCK_SKEW = timedelta(minutes=5)
ALWAYS_SERVER_NAMES = ("localhost", "127.0.0.1")
SPIFFE_PREFIX = "spiffe://meridian/environment/"

MIN_RSA_BITS = 2048
_ACCEPTED_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
# agent ids and environment names end up inside a URI and a certificate subject: keep them to a
# charset that needs no escaping anywhere.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_MAX_CSR_BYTES = 16 * 1024


def spiffe_uri(environment: str, agent_id: str) -> str:
    """The URI SAN that names one agent in one environment."""
    return f"{SPIFFE_PREFIX}{environment}/agent/{agent_id}"


def fingerprint_sha256(cert_pem: bytes) -> str:
    """Lowercase hex SHA-256 of the certificate's DER encoding (what ``openssl x509 -fingerprint
    -sha256`` prints, without colons)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise ValidationError(f"not a PEM certificate: {exc}") from exc
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


@dataclass(frozen=True)
class CertificateAuthority:
    """A loaded CA: its certificate and private key. Create with :meth:`load_or_create`."""

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey

    @classmethod
    def load_or_create(cls, directory: Path) -> CertificateAuthority:
        """Load ``ca.crt``/``ca.key`` from ``directory``, creating a new CA if neither exists."""
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        cert_path, key_path = directory / "ca.crt", directory / "ca.key"
        if cert_path.exists() and key_path.exists():
            return cls._load(cert_path, key_path)
        if cert_path.exists() or key_path.exists():
            present = cert_path if cert_path.exists() else key_path
            raise ValidationError(
                f"incomplete certificate authority in {directory}: found {present.name} but not "
                "its pair; restore the missing file or remove both to create a new CA "
                "(existing agents will then need to enroll again)"
            )
        ca = cls._generate()
        _write_private_key(key_path, ca.private_key)
        _write_atomic(cert_path, ca.certificate_pem, mode=0o644)
        return ca

    @classmethod
    def _load(cls, cert_path: Path, key_path: Path) -> CertificateAuthority:
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (ValueError, TypeError) as exc:
            raise ValidationError(f"cannot load the CA from {cert_path.parent}: {exc}") from exc
        # A key restored from a backup may come back world-readable; close that at once.
        if key_path.stat().st_mode & 0o077:
            key_path.chmod(0o600)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValidationError(f"{key_path} is not an EC private key")
        if key.public_key().public_numbers() != _ec_public(cert).public_numbers():
            raise ValidationError(f"{key_path} does not belong to the certificate {cert_path}")
        return cls(certificate=cert, private_key=key)

    @classmethod
    def _generate(cls) -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Meridian"),
                x509.NameAttribute(NameOID.COMMON_NAME, "Meridian control plane CA"),
            ]
        )
        now = utcnow()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(certificate=cert, private_key=key)

    @property
    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def ensure_server_certificate(self, directory: Path, names: Sequence[str]) -> tuple[Path, Path]:
        """Return ``(server.crt, server.key)`` in ``directory``, issuing a new pair when missing,
        not issued by this CA, covering different names, or expiring within 30 days."""
        wanted = _server_names(names)
        cert_path, key_path = directory / "server.crt", directory / "server.key"
        if self._server_certificate_current(cert_path, key_path, wanted):
            return cert_path, key_path
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._issue_server(key.public_key(), wanted)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_private_key(key_path, key)
        _write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
        return cert_path, key_path

    def _server_certificate_current(
        self, cert_path: Path, key_path: Path, wanted: tuple[str, ...]
    ) -> bool:
        if not (cert_path.exists() and key_path.exists()):
            return False
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            cert.verify_directly_issued_by(self.certificate)
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (ValueError, TypeError, x509.ExtensionNotFound, InvalidSignature):
            return False
        if key.public_key() != cert.public_key():
            return False
        present = {str(n) for n in san.get_values_for_type(x509.DNSName)}
        present |= {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
        fresh = cert.not_valid_after_utc - utcnow() > SERVER_RENEW_BEFORE
        return fresh and present == set(wanted)

    def _issue_server(
        self, public_key: ec.EllipticCurvePublicKey, names: Sequence[str]
    ) -> x509.Certificate:
        alt_names: list[x509.GeneralName] = []
        for name in names:
            ip = _as_ip(name)
            alt_names.append(x509.IPAddress(ip) if ip is not None else x509.DNSName(name))
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
        return self._sign(
            self._builder(subject, public_key, SERVER_VALIDITY)
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        )

    def sign_agent_csr(
        self,
        csr_pem: bytes,
        *,
        agent_id: str,
        environment: str,
        validity: timedelta = DEFAULT_AGENT_VALIDITY,
    ) -> bytes:
        """Issue a client certificate for an agent from its PKCS#10 request.

        The CSR proves possession of the key; everything else in it (subject, requested
        extensions) is ignored, because the identity comes from the join token, not the agent.

        Raises:
            ValidationError: malformed or badly signed CSR, unsupported or weak key, bad names.
        """
        _check_name("agent id", agent_id)
        _check_name("environment", environment)
        if validity <= timedelta(0):
            raise ValidationError("agent certificate validity must be positive")
        public_key = _load_csr_public_key(csr_pem)
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, environment),
                x509.NameAttribute(NameOID.COMMON_NAME, agent_id),
            ]
        )
        san = x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(spiffe_uri(environment, agent_id))]
        )
        cert = self._sign(
            self._builder(subject, public_key, validity)
            .add_extension(san, critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
        )
        return cert.public_bytes(serialization.Encoding.PEM)

    def _builder(
        self,
        subject: x509.Name,
        public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
        validity: timedelta,
    ) -> x509.CertificateBuilder:
        now = utcnow()
        # Never outlive the CA: a chain with a longer-lived leaf fails verification anyway.
        not_after = min(now + validity, self.certificate.not_valid_after_utc)
        ca_ski = x509.SubjectKeyIdentifier.from_public_key(self.private_key.public_key())
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), False
            )
        )

    def _sign(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        return builder.sign(self.private_key, hashes.SHA256())


def validate_csr(csr_pem: bytes) -> None:
    """Raise ValidationError unless ``csr_pem`` is a well-formed, self-signed, strong CSR."""
    _load_csr_public_key(csr_pem)


def _load_csr_public_key(csr_pem: bytes) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    if len(csr_pem) > _MAX_CSR_BYTES:
        raise ValidationError(f"certificate signing request is larger than {_MAX_CSR_BYTES} bytes")
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
        public_key = csr.public_key()
        signature_ok = csr.is_signature_valid
    except (ValueError, TypeError, x509.UnsupportedGeneralNameType) as exc:
        raise ValidationError(f"malformed certificate signing request: {exc}") from exc
    if not signature_ok:
        raise ValidationError("certificate signing request signature does not verify")
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if not isinstance(public_key.curve, _ACCEPTED_CURVES):
            raise ValidationError(
                f"unsupported EC curve {public_key.curve.name}; use P-256, P-384 or P-521"
            )
        return public_key
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < MIN_RSA_BITS:
            raise ValidationError(
                f"RSA key of {public_key.key_size} bits is too weak; use at least {MIN_RSA_BITS}"
            )
        return public_key
    raise ValidationError(
        f"unsupported key type {type(public_key).__name__}; use an EC P-256 key (or RSA >= 2048)"
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=not cert_sign,  # needed only by RSA key exchange in TLS 1.2 leaves
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _ec_public(cert: x509.Certificate) -> ec.EllipticCurvePublicKey:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValidationError("the CA certificate does not hold an EC public key")
    return key


def _check_name(what: str, value: str) -> None:
    if not _NAME_RE.match(value):
        raise ValidationError(
            f"invalid {what} {value!r}: use 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )


def _as_ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def _server_names(names: Sequence[str]) -> tuple[str, ...]:
    """Normalise server names: stripped, lowercased DNS names, canonical IPs, no duplicates."""
    result: list[str] = []
    for raw in (*names, *ALWAYS_SERVER_NAMES):
        name = raw.strip()
        ip = _as_ip(name.strip("[]"))
        name = str(ip) if ip is not None else name.lower()
        if not name or any(c.isspace() for c in name):
            raise ValidationError(f"invalid server name {raw!r}")
        if name not in result:
            result.append(name)
    return tuple(result)


def _write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_atomic(path, pem, mode=0o600)


def _write_atomic(path: Path, data: bytes, *, mode: int) -> None:
    """Write via a temporary file created with its final mode, so a crash never leaves a
    half-written file and a key is never readable by others, not even for a moment."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # the umask may have removed bits we asked for
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
