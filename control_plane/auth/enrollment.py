"""Join tokens in the store, and enrollment: a one-time token + a CSR become an agent identity."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from control_plane import audit
from control_plane.auth.ca import CertificateAuthority, fingerprint_sha256
from control_plane.auth.join_tokens import new_join_token, parse_join_token, verify_secret
from control_plane.store.models import AgentRow, JoinTokenRow
from meridian.errors import NotFound, PermissionDenied, ValidationError

MAX_AGENT_NAME = 255


def create_join_token_row(
    session: Session, environment: str, ttl_s: float, now: dt.datetime
) -> str:
    """Store a new one-time token (only its hash) and return the plaintext once."""
    if not environment or len(environment) > 253:
        raise ValidationError("environment must be 1-253 characters")
    if ttl_s <= 0:
        raise ValidationError("token lifetime must be positive")
    token_id, plaintext, secret_hash = new_join_token()
    row = JoinTokenRow(
        id=token_id,
        secret_hash=secret_hash,
        environment=environment,
        created_at=now,
        expires_at=now + dt.timedelta(seconds=ttl_s),
    )
    session.add(row)
    # Tokens are minted on the control-plane host with the `meridian tokens` CLI.
    audit.records.token_created(session, row, actor=audit.CLI)
    return plaintext


def enroll_agent(
    session: Session,
    ca: CertificateAuthority,
    *,
    token: str,
    csr_pem: bytes,
    name: str,
    now: dt.datetime,
    validity: dt.timedelta,
) -> tuple[AgentRow, bytes]:
    """Redeem ``token`` (exactly once) and sign the agent's CSR."""
    token_id, secret = parse_join_token(token)
    row = session.get(JoinTokenRow, token_id)
    if row is None or not verify_secret(secret, row.secret_hash):
        raise PermissionDenied("join token is not valid")
    if row.revoked_at is not None:
        raise PermissionDenied("join token was revoked; create a new one")
    if row.used_at is not None:
        raise PermissionDenied("join token was already used; create a new one")
    if row.expires_at <= now:
        raise PermissionDenied(f"join token expired at {row.expires_at:%Y-%m-%d %H:%M:%S} UTC")
    agent_id = str(uuid.uuid4())
    certificate = ca.sign_agent_csr(
        csr_pem, agent_id=agent_id, environment=row.environment, validity=validity
    )
    # Conditional update: two concurrent enrollments with one token cannot both win.
    claimed = session.execute(
        update(JoinTokenRow)
        .where(JoinTokenRow.id == token_id, JoinTokenRow.used_at.is_(None))
        .values(used_at=now, used_by_agent_id=agent_id)
    )
    if getattr(claimed, "rowcount", 0) != 1:
        raise PermissionDenied("join token was already used; create a new one")
    agent = AgentRow(
        id=agent_id,
        name=(name or agent_id[:8])[:MAX_AGENT_NAME],
        environment=row.environment,
        labels={},
        providers=[],
        capacity=0,
        status="disconnected",
        cert_fingerprint=fingerprint_sha256(certificate),
        enrolled_at=now,
        last_applied_seq=0,
    )
    session.add(agent)
    audit.records.agent_enrolled(session, agent, token_id)
    return agent, certificate


def list_join_tokens(session: Session) -> list[JoinTokenRow]:
    return list(session.scalars(select(JoinTokenRow).order_by(JoinTokenRow.created_at)))


def revoke_join_token(session: Session, token_id: str, now: dt.datetime) -> JoinTokenRow:
    """Make an unused token worthless (a used one already is)."""
    row = session.get(JoinTokenRow, token_id.strip())
    if row is None:
        raise NotFound(f"no join token has the id {token_id!r} (see `meridian tokens list`)")
    if row.revoked_at is None:
        row.revoked_at = now
        audit.append(
            session,
            actor=audit.CLI,
            action="token.revoked",
            subject=row.id,
            details={"environment": row.environment, "was_used": row.used_at is not None},
            now=now,
        )
    return row
