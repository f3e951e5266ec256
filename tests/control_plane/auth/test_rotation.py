"""Certificate rotation in the store: who may renew, when, and what stays accepted."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from sqlalchemy import select

from agent.identity import generate_key_and_csr
from control_plane import audit
from control_plane.auth.ca import CertificateAuthority
from control_plane.auth.enrollment import create_join_token_row, enroll_agent
from control_plane.auth.identity import AgentIdentity, identity_from_certificate
from control_plane.auth.rotation import (
    accepts_certificate,
    renew_in_s,
    rotate_certificate,
)
from control_plane.store.db import Store
from control_plane.store.models import AgentRow, AuditRecordRow
from meridian.core.errors import ValidationError

LIFETIME = dt.timedelta(hours=3)


def presented(cert_pem: bytes) -> AgentIdentity:
    identity = identity_from_certificate(x509.load_pem_x509_certificate(cert_pem))
    assert identity is not None
    return identity


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path / "ca")


def enroll(store: Store, ca: CertificateAuthority, now: dt.datetime) -> tuple[str, bytes]:
    token = store.run_sync(create_join_token_row, "lab", 600.0, now)
    _, csr = generate_key_and_csr("edge")
    agent, cert = store.run_sync(
        lambda s: enroll_agent(
            s, ca, token=token, csr_pem=csr, name="edge", now=now, validity=LIFETIME
        )
    )
    return agent.id, cert


def rotate(store: Store, ca: CertificateAuthority, cert: bytes, now: dt.datetime):  # type: ignore[no-untyped-def]
    _, csr = generate_key_and_csr("edge")
    return store.run_sync(rotate_certificate, ca, presented(cert), csr, now, LIFETIME)


def agent_row(store: Store, agent_id: str) -> AgentRow:
    return store.run_sync(lambda s: s.get(AgentRow, agent_id))


def test_renew_time_is_two_thirds_into_the_lifetime() -> None:
    issued = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    not_after = issued + dt.timedelta(hours=24)
    assert renew_in_s(issued, not_after, issued) == pytest.approx(16 * 3600)
    assert renew_in_s(issued, not_after, issued + dt.timedelta(hours=20)) == 0.001  # due now


def test_enrollment_records_the_certificate_lifetime(
    store: Store, ca: CertificateAuthority
) -> None:
    now = dt.datetime.now(dt.UTC)
    agent_id, cert = enroll(store, ca, now)
    row = agent_row(store, agent_id)
    assert abs(row.cert_issued_at - now) < dt.timedelta(seconds=5)
    assert row.cert_not_after == presented(cert).not_after
    assert row.previous_cert_fingerprint == ""


def test_a_fresh_certificate_is_not_renewed_again(store: Store, ca: CertificateAuthority) -> None:
    now = dt.datetime.now(dt.UTC)
    agent_id, cert = enroll(store, ca, now)
    refused = rotate(store, ca, cert, now + dt.timedelta(minutes=10))
    assert refused.certificate_pem == b"" and "too new" in refused.refused
    assert refused.retry_in_s == pytest.approx((LIFETIME / 3).total_seconds() - 600, abs=1)
    assert agent_row(store, agent_id).cert_fingerprint == presented(cert).fingerprint


def test_rotation_issues_the_same_identity_and_keeps_the_old_one_until_it_expires(
    store: Store, ca: CertificateAuthority
) -> None:
    now = dt.datetime.now(dt.UTC)
    agent_id, first = enroll(store, ca, now)
    later = now + dt.timedelta(hours=1, minutes=30)
    renewal = rotate(store, ca, first, later)
    assert renewal.refused == ""
    second = presented(renewal.certificate_pem)
    assert (second.agent_id, second.environment) == (agent_id, "lab")
    # Issued by the wall clock, so due two hours after `now`: half an hour after `later`.
    assert renewal.renew_in_s == pytest.approx(1800, abs=5)

    row = agent_row(store, agent_id)
    assert row.cert_fingerprint == second.fingerprint
    assert row.previous_cert_fingerprint == presented(first).fingerprint
    assert accepts_certificate(row, second.fingerprint, later)
    assert accepts_certificate(row, presented(first).fingerprint, later)
    # Once the old certificate's own expiry has passed it is no longer accepted.
    assert not accepts_certificate(row, presented(first).fingerprint, presented(first).not_after)

    (record,) = store.run_sync(
        lambda s: [
            (r.actor, r.details)
            for r in s.scalars(
                select(AuditRecordRow).where(AuditRecordRow.action == "agent.rotated")
            )
        ]
    )
    assert record[0] == f"agent:{agent_id}"
    assert f'"cert_fingerprint":"{second.fingerprint}"' in record[1]
    assert store.run_sync(audit.verify_chain).ok


def test_an_agent_that_lost_the_answer_rotates_again_with_its_old_certificate(
    store: Store, ca: CertificateAuthority
) -> None:
    now = dt.datetime.now(dt.UTC)
    agent_id, first = enroll(store, ca, now)
    lost = rotate(store, ca, first, now + dt.timedelta(hours=2))
    # The answer never arrived: the agent still presents `first`; rate limits do not apply.
    again = rotate(store, ca, first, now + dt.timedelta(hours=2, seconds=5))
    assert again.refused == "" and again.certificate_pem != lost.certificate_pem
    row = agent_row(store, agent_id)
    assert row.cert_fingerprint == presented(again.certificate_pem).fingerprint
    assert row.previous_cert_fingerprint == presented(first).fingerprint
    # The certificate that never arrived is worthless.
    assert not accepts_certificate(row, presented(lost.certificate_pem).fingerprint, now)


def test_superseded_and_revoked_identities_are_refused(
    store: Store, ca: CertificateAuthority
) -> None:
    now = dt.datetime.now(dt.UTC)
    agent_id, first = enroll(store, ca, now)
    second = rotate(store, ca, first, now + dt.timedelta(hours=2)).certificate_pem
    third = rotate(store, ca, second, now + dt.timedelta(hours=3)).certificate_pem
    assert third
    superseded = rotate(store, ca, first, now + dt.timedelta(hours=3))
    assert "superseded" in superseded.refused
    assert not accepts_certificate(agent_row(store, agent_id), presented(first).fingerprint, now)

    store.run_sync(lambda s: setattr(s.get(AgentRow, agent_id), "revoked_at", now))
    revoked = rotate(store, ca, third, now + dt.timedelta(hours=5))
    assert "revoked" in revoked.refused and revoked.certificate_pem == b""


def test_a_malformed_csr_is_a_validation_error(store: Store, ca: CertificateAuthority) -> None:
    now = dt.datetime.now(dt.UTC)
    _, cert = enroll(store, ca, now)
    with pytest.raises(ValidationError, match="certificate signing request"):
        store.run_sync(
            rotate_certificate,
            ca,
            presented(cert),
            b"not a csr",
            now + dt.timedelta(hours=2),
            LIFETIME,
        )
