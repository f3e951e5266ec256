"""Join tokens in the store, and enrollment: a one-time token + a CSR become an agent identity."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from control_plane import audit
from control_plane.auth.ca import CertificateAuthority
from control_plane.auth.join_tokens import new_join_token, parse_join_token, verify_secret
from control_plane.auth.rotation import record_issued
from control_plane.store.models import AgentRow, JoinTokenRow
from meridian.core.errors import NotFound, Unauthenticated, ValidationError
from meridian.core.selectors import reserved_label_problem, validate_key, validate_value

MAX_AGENT_NAME = 255
MAX_PINNED_LABELS = 64


def create_join_token_row(
    session: Session,
    environment: str,
    ttl_s: float,
    now: dt.datetime,
    labels: Mapping[str, str] | None = None,
) -> str:
    """Store a new one-time token (only its hash) and return the plaintext once.

    ``labels`` are pinned: the agent enrolled with the token always carries exactly these
    values for these keys and may claim no other labels (``pinned_labels_problem``).
    """
    if not environment or len(environment) > 253:
        raise ValidationError("environment must be 1-253 characters")
    if ttl_s <= 0:
        raise ValidationError("token lifetime must be positive")
    pinned = dict(labels or {})
    _validate_labels(pinned)
    token_id, plaintext, secret_hash = new_join_token()
    row = JoinTokenRow(
        id=token_id,
        secret_hash=secret_hash,
        environment=environment,
        labels=pinned,
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
        raise Unauthenticated("join token is not valid")
    if row.revoked_at is not None:
        raise Unauthenticated("join token was revoked; create a new one")
    if row.used_at is not None:
        raise Unauthenticated("join token was already used; create a new one")
    if row.expires_at <= now:
        raise Unauthenticated(f"join token expired at {row.expires_at:%Y-%m-%d %H:%M:%S} UTC")
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
        raise Unauthenticated("join token was already used; create a new one")
    agent = AgentRow(
        id=agent_id,
        name=(name or agent_id[:8])[:MAX_AGENT_NAME],
        environment=row.environment,
        labels=dict(row.labels or {}),
        pinned_labels=dict(row.labels or {}),
        providers=[],
        capacity=0,
        status="disconnected",
        enrolled_at=now,
        last_applied_seq=0,
    )
    record_issued(agent, certificate)
    session.add(agent)
    audit.records.agent_enrolled(session, agent, token_id)
    return agent, certificate


def pinned_labels_problem(pinned: Mapping[str, str], claimed: Mapping[str, str]) -> str | None:
    """Why an agent whose token pinned ``pinned`` may not claim ``claimed`` (None: it may).

    An agent may leave pinned labels out (they apply anyway), but may not change their values
    nor add labels of its own: selectors route work by labels, so an agent that could claim
    any label could attract work meant for another site of its environment.
    """
    if not pinned:
        return None
    changed = sorted(k for k, v in claimed.items() if k in pinned and pinned[k] != v)
    extra = sorted(k for k in claimed if k not in pinned)
    if not changed and not extra:
        return None
    fixed = ", ".join(f"{k}={v}" for k, v in sorted(pinned.items()))
    wrong = ", ".join(changed + extra)
    return (f"labels {wrong} are not allowed: this agent's join token fixed its labels to {fixed}")[
        :1000
    ]


def _validate_labels(labels: Mapping[str, str]) -> None:
    if len(labels) > MAX_PINNED_LABELS:
        raise ValidationError(f"a join token may pin at most {MAX_PINNED_LABELS} labels")
    for key, value in labels.items():
        problem = reserved_label_problem(key) or validate_key(key) or validate_value(value)
        if problem:
            raise ValidationError(f"label {key[:80]!r}: {problem[:300]}")


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
