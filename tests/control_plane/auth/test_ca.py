from __future__ import annotations

import ipaddress
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from control_plane.auth.ca import CertificateAuthority, fingerprint_sha256
from control_plane.auth.identity import identity_from_auth_context, identity_from_certificate
from meridian.core.errors import ValidationError


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path_factory.mktemp("ca"))


def make_csr(key: object = None, *, subject: str = "evil-admin", **san: str) -> bytes:
    key = key if key is not None else ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    )
    if "uri" in san:
        uri = x509.UniformResourceIdentifier(san["uri"])
        builder = builder.add_extension(x509.SubjectAlternativeName([uri]), critical=False)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM)  # type: ignore[arg-type]


def test_ca_files_are_created_with_safe_modes_and_reloaded(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    key_mode = stat.S_IMODE((tmp_path / "ca" / "ca.key").stat().st_mode)
    assert key_mode == 0o600
    assert stat.S_IMODE((tmp_path / "ca").stat().st_mode) == 0o700
    again = CertificateAuthority.load_or_create(tmp_path / "ca")
    assert again.certificate_pem == ca.certificate_pem
    assert list((tmp_path / "ca").iterdir()) != []
    assert not [p for p in (tmp_path / "ca").iterdir() if p.name.endswith(".tmp")]


def test_ca_certificate_is_a_ten_year_ec_ca(ca: CertificateAuthority) -> None:
    cert = x509.load_pem_x509_certificate(ca.certificate_pem)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert timedelta(days=3649) < lifetime < timedelta(days=3651)


def test_loose_key_permissions_are_tightened_on_load(tmp_path: Path) -> None:
    CertificateAuthority.load_or_create(tmp_path)
    (tmp_path / "ca.key").chmod(0o644)
    CertificateAuthority.load_or_create(tmp_path)
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600


def test_corrupt_ca_is_reported(tmp_path: Path) -> None:
    CertificateAuthority.load_or_create(tmp_path)
    (tmp_path / "ca.crt").write_bytes(b"garbage")
    with pytest.raises(ValidationError, match="cannot load the CA"):
        CertificateAuthority.load_or_create(tmp_path)


def test_server_key_not_matching_its_certificate_is_replaced(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    cert_path, key_path = ca.ensure_server_certificate(tmp_path, [])
    other_key = ec.generate_private_key(ec.SECP256R1())
    key_path.write_bytes(
        other_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    before = cert_path.read_bytes()
    ca.ensure_server_certificate(tmp_path, [])
    assert cert_path.read_bytes() != before
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    assert key.public_key() == x509.load_pem_x509_certificate(cert_path.read_bytes()).public_key()


def test_half_a_ca_is_refused(tmp_path: Path) -> None:
    CertificateAuthority.load_or_create(tmp_path)
    (tmp_path / "ca.key").unlink()
    with pytest.raises(ValidationError, match=r"found ca\.crt but not its pair"):
        CertificateAuthority.load_or_create(tmp_path)


def test_agent_certificate_ignores_csr_subject_and_names_the_agent(
    ca: CertificateAuthority,
) -> None:
    csr = make_csr(subject="root", uri="spiffe://meridian/environment/prod/agent/admin")
    pem = ca.sign_agent_csr(csr, agent_id="ag-123", environment="aws-demo")
    cert = x509.load_pem_x509_certificate(pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "ag-123"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == (
        "aws-demo"
    )
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://meridian/environment/aws-demo/agent/ag-123"
    ]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    cert.verify_directly_issued_by(ca.certificate)


def test_agent_certificate_is_short_lived(ca: CertificateAuthority) -> None:
    pem = ca.sign_agent_csr(make_csr(), agent_id="a", environment="e")
    cert = x509.load_pem_x509_certificate(pem)
    assert timedelta(hours=23) < cert.not_valid_after_utc - datetime.now(UTC) <= timedelta(hours=24)
    assert cert.not_valid_before_utc < datetime.now(UTC)
    short = ca.sign_agent_csr(
        make_csr(), agent_id="a", environment="e", validity=timedelta(hours=1)
    )
    remaining = x509.load_pem_x509_certificate(short).not_valid_after_utc - datetime.now(UTC)
    assert remaining <= timedelta(hours=1)


def test_identity_round_trips_through_the_auth_context(ca: CertificateAuthority) -> None:
    pem = ca.sign_agent_csr(make_csr(), agent_id="ag-9", environment="onprem.dc1")
    identity = identity_from_auth_context({"x509_pem_cert": [pem], "transport_security_type": []})
    assert identity is not None
    assert (identity.agent_id, identity.environment) == ("ag-9", "onprem.dc1")
    assert identity.fingerprint == fingerprint_sha256(pem)
    assert identity.not_after == x509.load_pem_x509_certificate(pem).not_valid_after_utc
    assert identity_from_auth_context({"transport_security_type": [b"ssl"]}) is None
    assert identity_from_auth_context({"x509_pem_cert": [b"garbage"]}) is None


def test_server_certificate_is_not_an_agent(ca: CertificateAuthority, tmp_path: Path) -> None:
    cert_path, _ = ca.ensure_server_certificate(tmp_path, [])
    assert identity_from_certificate(x509.load_pem_x509_certificate(cert_path.read_bytes())) is None


@pytest.mark.parametrize(
    ("csr", "message"),
    [
        (b"not a csr", "malformed certificate signing request"),
        (
            b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            "malformed",
        ),
        (b"x" * 20000, "larger than"),
    ],
)
def test_malformed_csr_is_rejected(ca: CertificateAuthority, csr: bytes, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ca.sign_agent_csr(csr, agent_id="a", environment="e")


def test_csr_with_broken_signature_is_rejected(ca: CertificateAuthority) -> None:
    good = x509.load_pem_x509_csr(make_csr())
    der = bytearray(good.public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0xFF  # inside the signature value
    pem = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(ValidationError, match="signature does not verify"):
        ca.sign_agent_csr(pem, agent_id="a", environment="e")


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (rsa.generate_private_key(65537, 1024), "too weak"),
        (ed25519.Ed25519PrivateKey.generate(), "unsupported key type"),
        (ec.generate_private_key(ec.SECP256K1()), "unsupported EC curve"),
    ],
)
def test_weak_or_unsupported_keys_are_rejected(
    ca: CertificateAuthority, key: object, message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        ca.sign_agent_csr(make_csr(key), agent_id="a", environment="e")


def test_rsa_2048_is_accepted(ca: CertificateAuthority) -> None:
    pem = ca.sign_agent_csr(
        make_csr(rsa.generate_private_key(65537, 2048)), agent_id="a", environment="e"
    )
    assert isinstance(x509.load_pem_x509_certificate(pem).public_key(), rsa.RSAPublicKey)


@pytest.mark.parametrize(("agent_id", "environment"), [("", "e"), ("a/../b", "e"), ("a", "env x")])
def test_unsafe_names_are_rejected(
    ca: CertificateAuthority, agent_id: str, environment: str
) -> None:
    with pytest.raises(ValidationError, match="invalid"):
        ca.sign_agent_csr(make_csr(), agent_id=agent_id, environment=environment)


def _sans(cert_path: Path) -> set[str]:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = {str(n) for n in san.get_values_for_type(x509.DNSName)}
    return names | {f"ip:{ip}" for ip in san.get_values_for_type(x509.IPAddress)}


def test_server_certificate_has_dns_and_ip_sans(ca: CertificateAuthority, tmp_path: Path) -> None:
    cert_path, key_path = ca.ensure_server_certificate(
        tmp_path, ["cp.example.com", "10.0.0.5", "::1"]
    )
    assert _sans(cert_path) == {
        "cp.example.com",
        "localhost",
        "ip:10.0.0.5",
        "ip:::1",
        "ip:127.0.0.1",
    }
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert ipaddress.ip_address("10.0.0.5") in cert.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.IPAddress)


def test_server_certificate_is_reused_until_names_change(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    cert_path, _ = ca.ensure_server_certificate(tmp_path, ["a.example"])
    first = cert_path.read_bytes()
    ca.ensure_server_certificate(tmp_path, ["A.example", "localhost"])
    assert cert_path.read_bytes() == first
    ca.ensure_server_certificate(tmp_path, ["b.example"])
    assert cert_path.read_bytes() != first
    assert "b.example" in _sans(cert_path)


def test_server_certificate_from_another_ca_is_replaced(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    other = CertificateAuthority.load_or_create(tmp_path / "other")
    cert_path, _ = other.ensure_server_certificate(tmp_path / "srv", ["a.example"])
    ca.ensure_server_certificate(tmp_path / "srv", ["a.example"])
    x509.load_pem_x509_certificate(cert_path.read_bytes()).verify_directly_issued_by(ca.certificate)


def test_expiring_server_certificate_is_reissued(ca: CertificateAuthority, tmp_path: Path) -> None:
    cert_path, key_path = ca.ensure_server_certificate(tmp_path, [])
    # Overwrite with a valid-name certificate that expires in 10 days.
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    now = datetime.now(UTC)
    san = x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    soon = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=10))
        .add_extension(san, critical=False)
        .sign(ca.private_key, hashes.SHA256())
    )
    cert_path.write_bytes(soon.public_bytes(serialization.Encoding.PEM))
    ca.ensure_server_certificate(tmp_path, [])
    renewed = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert renewed.not_valid_after_utc - now > timedelta(days=300)


def test_fingerprint_is_hex_sha256(ca: CertificateAuthority) -> None:
    fp = fingerprint_sha256(ca.certificate_pem)
    assert len(fp) == 64 and int(fp, 16) >= 0
    with pytest.raises(ValidationError):
        fingerprint_sha256(b"nope")
