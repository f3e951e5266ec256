"""Certificate rotation: an enrolled agent trades a CSR for a fresh certificate over its stream.

The schedule follows kubelet and SPIRE: an agent renews once two thirds of its certificate's
lifetime have passed, so a control plane that is down for a while still leaves a third of the
lifetime to rotate in. Only the identity the agent already has is renewed (same agent id and
environment); a revoked agent, or one presenting a certificate that is neither its current nor
its immediately previous one, is refused.

The previous certificate stays valid until it expires: an agent that crashed after asking but
before saving the new certificate reconnects with the old one and simply rotates again.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from sqlalchemy.orm import Session

from control_plane import audit
from control_plane.auth.ca import (
    CLOCK_SKEW,
    CertificateAuthority,
    fingerprint_sha256,
    validate_csr,
)
from control_plane.auth.identity import AgentIdentity
from control_plane.store.models import AgentRow
from meridian.core.errors import ValidationError

RENEW_AT_FRACTION = 2 / 3
# A certificate younger than this fraction of its lifetime is not renewed again (rate limit).
MIN_AGE_FRACTION = 1 / 3
REFUSED_RETRY_S = 60.0
DUE_NOW_S = 0.001


@dataclass(frozen=True)
class Renewal:
    """The answer to one renewal request: a certificate, or a refusal with a retry time."""

    certificate_pem: bytes = b""
    renew_in_s: float = 0.0
    refused: str = ""
    retry_in_s: float = 0.0


def issued_at(identity: AgentIdentity) -> dt.datetime:
    """When the CA issued this certificate (it back-dates ``not_before`` by the clock skew)."""
    return identity.not_before + CLOCK_SKEW


def renew_in_s(issued: dt.datetime, not_after: dt.datetime, now: dt.datetime) -> float:
    """Seconds from ``now`` until a certificate issued at ``issued`` should be rotated."""
    renew_at = issued + (not_after - issued) * RENEW_AT_FRACTION
    # Never 0: in a Welcome that means "this server does not rotate".
    return max(DUE_NOW_S, (renew_at - now).total_seconds())


def record_issued(agent: AgentRow, certificate_pem: bytes) -> None:
    """Make ``certificate_pem`` the agent's current certificate (enrollment and rotation)."""
    try:
        cert = x509.load_pem_x509_certificate(certificate_pem)
    except ValueError as exc:  # we just issued it: this would be a bug, not bad input
        raise ValidationError(f"issued certificate does not parse: {exc}") from exc
    agent.cert_fingerprint = fingerprint_sha256(certificate_pem)
    agent.cert_issued_at = cert.not_valid_before_utc + CLOCK_SKEW
    agent.cert_not_after = cert.not_valid_after_utc


def rotate_certificate(
    session: Session,
    ca: CertificateAuthority,
    presented: AgentIdentity,
    csr_pem: bytes,
    now: dt.datetime,
    validity: dt.timedelta,
) -> Renewal:
    """Issue the agent presenting ``presented`` a new certificate for the key in ``csr_pem``.

    Raises ValidationError for a malformed CSR (the stream treats it as a protocol error).
    """
    validate_csr(csr_pem)  # bad input is an error whatever the agent's state
    agent = session.get(AgentRow, presented.agent_id, with_for_update=True)
    if agent is None or agent.environment != presented.environment:
        return Renewal(refused="this agent is not enrolled", retry_in_s=REFUSED_RETRY_S)
    if agent.revoked_at is not None:
        return Renewal(refused="this agent was revoked", retry_in_s=REFUSED_RETRY_S)
    if presented.fingerprint == agent.cert_fingerprint:
        too_young = _too_young(agent, now)
        if too_young > 0:
            return Renewal(
                refused="the current certificate is too new to rotate again",
                retry_in_s=too_young,
            )
        replaced_fingerprint, replaced_not_after = agent.cert_fingerprint, agent.cert_not_after
    elif presented.fingerprint == agent.previous_cert_fingerprint:
        # The agent never got (or never saved) the certificate it asked for last time; the
        # lost one is simply replaced, and the one it still uses stays the previous one.
        replaced_fingerprint = agent.previous_cert_fingerprint
        replaced_not_after = agent.previous_cert_not_after
    else:
        return Renewal(
            refused="this certificate was superseded; the agent must enroll again",
            retry_in_s=REFUSED_RETRY_S,
        )
    certificate = ca.sign_agent_csr(
        csr_pem, agent_id=agent.id, environment=agent.environment, validity=validity
    )
    old_fingerprint = agent.cert_fingerprint
    agent.previous_cert_fingerprint = replaced_fingerprint
    agent.previous_cert_not_after = replaced_not_after or presented.not_after
    record_issued(agent, certificate)
    assert agent.cert_issued_at is not None and agent.cert_not_after is not None
    audit.append(
        session,
        actor=audit.agent_actor(agent.id),
        action="agent.rotated",
        subject=agent.id,
        details={
            "environment": agent.environment,
            "presented_fingerprint": presented.fingerprint,
            "replaced_fingerprint": old_fingerprint,
            "cert_fingerprint": agent.cert_fingerprint,
            "not_after": audit.format_at(agent.cert_not_after),
        },
        now=now,
    )
    return Renewal(
        certificate_pem=certificate,
        renew_in_s=renew_in_s(agent.cert_issued_at, agent.cert_not_after, now),
    )


def accepts_certificate(agent: AgentRow, fingerprint: str, now: dt.datetime) -> bool:
    """Whether a connection with this certificate belongs to the agent's current identity.

    TLS has already checked the signature and expiry; this adds "not superseded".
    """
    if not agent.cert_fingerprint or fingerprint == agent.cert_fingerprint:
        return True
    previous_valid = agent.previous_cert_not_after is None or agent.previous_cert_not_after > now
    return fingerprint == agent.previous_cert_fingerprint and previous_valid


def _too_young(agent: AgentRow, now: dt.datetime) -> float:
    """Seconds until the current certificate may be rotated again (0: it may be now)."""
    if agent.cert_issued_at is None or agent.cert_not_after is None:
        return 0.0  # enrolled before rotation existed
    lifetime = agent.cert_not_after - agent.cert_issued_at
    may_rotate_at = agent.cert_issued_at + lifetime * MIN_AGE_FRACTION
    return max(0.0, (may_rotate_at - now).total_seconds())
