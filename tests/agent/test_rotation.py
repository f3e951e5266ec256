"""The agent installs rotated certificates so that a crash at any moment leaves a usable pair."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509

from agent.actions import CertificateAction
from agent.identity import (
    KEY_FILE,
    NEXT_CERT_FILE,
    NEXT_KEY_FILE,
    AgentIdentity,
    generate_key_and_csr,
    key_matches_certificate,
    load_identity,
    save_identity,
    save_rotated,
)
from agent.rotation import ANSWER_TIMEOUT_S, MIN_RETRY_S, CertificateRotator
from control_plane.auth.ca import CertificateAuthority
from meridian.core.errors import ValidationError
from tests.support.deadlines import DEADLINE_S


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path / "ca")


def issue(ca: CertificateAuthority, csr: bytes) -> bytes:
    return ca.sign_agent_csr(csr, agent_id="ag-1", environment="lab")


@pytest.fixture
def enrolled(tmp_path: Path, ca: CertificateAuthority) -> Path:
    key, csr = generate_key_and_csr("edge")
    data_dir = tmp_path / "agent"
    save_identity(data_dir, AgentIdentity("ag-1", "lab", "cp:7443", key, issue(ca, csr), b"CA"))
    return data_dir


def new_pair(ca: CertificateAuthority) -> tuple[bytes, bytes]:
    key, csr = generate_key_and_csr("edge")
    return key, issue(ca, csr)


def test_a_rotated_pair_replaces_the_old_one(enrolled: Path, ca: CertificateAuthority) -> None:
    key, cert = new_pair(ca)
    save_rotated(enrolled, key, cert)
    loaded = load_identity(enrolled)
    assert (loaded.key_pem, loaded.cert_pem) == (key, cert)
    assert stat.S_IMODE(os.stat(enrolled / KEY_FILE).st_mode) == 0o600
    assert not (enrolled / NEXT_KEY_FILE).exists() and not (enrolled / NEXT_CERT_FILE).exists()


def test_a_certificate_for_another_key_is_refused(enrolled: Path, ca: CertificateAuthority) -> None:
    before = load_identity(enrolled)
    key, _ = new_pair(ca)
    _, other_cert = new_pair(ca)
    with pytest.raises(ValidationError, match="not for the key"):
        save_rotated(enrolled, key, other_cert)
    assert load_identity(enrolled) == before


def test_load_finishes_a_rotation_interrupted_after_both_files_were_written(
    enrolled: Path, ca: CertificateAuthority
) -> None:
    key, cert = new_pair(ca)
    (enrolled / NEXT_KEY_FILE).write_bytes(key)
    (enrolled / NEXT_CERT_FILE).write_bytes(cert)
    loaded = load_identity(enrolled)
    assert (loaded.key_pem, loaded.cert_pem) == (key, cert)


def test_load_finishes_a_rotation_interrupted_between_the_two_renames(
    enrolled: Path, ca: CertificateAuthority
) -> None:
    key, cert = new_pair(ca)
    os.replace(_write(enrolled / NEXT_KEY_FILE, key), enrolled / KEY_FILE)
    _write(enrolled / NEXT_CERT_FILE, cert)
    loaded = load_identity(enrolled)
    assert (loaded.key_pem, loaded.cert_pem) == (key, cert)
    assert key_matches_certificate(loaded.key_pem, loaded.cert_pem)


def test_load_drops_a_half_written_rotation_and_keeps_the_old_pair(
    enrolled: Path, ca: CertificateAuthority
) -> None:
    before = load_identity(enrolled)
    key, _ = new_pair(ca)
    _write(enrolled / NEXT_KEY_FILE, key)  # crashed before the certificate was written
    assert load_identity(enrolled) == before
    assert not (enrolled / NEXT_KEY_FILE).exists()


class Endpoint:
    def __init__(self) -> None:
        self.used: list[tuple[bytes, bytes]] = []

    def use_certificate(self, key_pem: bytes, cert_pem: bytes) -> None:
        self.used.append((key_pem, cert_pem))


def test_rotator_installs_the_answer_to_its_own_request(
    enrolled: Path, ca: CertificateAuthority
) -> None:
    async def scenario() -> None:
        endpoint = Endpoint()
        rotator = CertificateRotator(enrolled, endpoint, "edge")
        rotator.schedule(30.0)
        waiting = asyncio.ensure_future(rotator.wait_due())
        await asyncio.sleep(0.05)
        assert not waiting.done()
        rotator.schedule(0.001)  # a new Welcome: the certificate is due now
        await asyncio.wait_for(waiting, DEADLINE_S)

        csr = rotator.request()
        cert = issue(ca, csr)
        # A refusal first: nothing is installed and the next try waits as told.
        rotator.answer(CertificateAction(b"", 0.0, refused="too new", retry_in_s=0.0))
        assert endpoint.used == [] and rotator.rotations == 0
        rotator.answer(CertificateAction(cert, 500.0))  # no request is pending any more
        assert endpoint.used == []

        csr = rotator.request()
        cert = issue(ca, csr)
        rotator.answer(CertificateAction(cert, 500.0))
        assert rotator.rotations == 1
        assert load_identity(enrolled).cert_pem == cert
        assert endpoint.used == [(load_identity(enrolled).key_pem, cert)]
        # The CSR names no identity: the control plane puts the agent id in the certificate.
        csr_subject = x509.load_pem_x509_csr(csr).subject.rfc4514_string()
        assert "ag-1" not in csr_subject

    asyncio.run(scenario())


def test_rotator_retries_after_a_refusal_no_sooner_than_the_minimum() -> None:
    now = [0.0]
    rotator = CertificateRotator(Path("/nonexistent"), Endpoint(), "edge", clock=lambda: now[0])
    assert rotator.due_in_s is None  # parked until a Welcome says when
    rotator.request()
    assert rotator.due_in_s == ANSWER_TIMEOUT_S  # asks again if the answer is lost
    rotator.answer(CertificateAction(b"", 0.0, refused="busy", retry_in_s=0.0))
    assert rotator.due_in_s == MIN_RETRY_S
    rotator.answer(CertificateAction(b"", 0.0, refused="too new", retry_in_s=120.0))
    assert rotator.due_in_s == 120.0
    rotator.schedule(0.0)  # a server that does not rotate
    assert rotator.due_in_s is None


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_certificates_issued_for_rotation_carry_a_short_lifetime(ca: CertificateAuthority) -> None:
    _, cert = new_pair(ca)
    parsed = x509.load_pem_x509_certificate(cert)
    assert parsed.not_valid_after_utc - dt.datetime.now(dt.UTC) <= dt.timedelta(hours=24)
