"""API tokens in the store: issue, authenticate, list and revoke (session first)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from control_plane import audit
from control_plane.auth.api_tokens import (
    ROLES,
    Role,
    new_api_token,
    parse_api_token,
    runner_epoch_of,
    runner_token_name,
)
from control_plane.auth.join_tokens import verify_secret
from control_plane.orchestration.scopes import normalize
from control_plane.store.models import ApiTokenRow
from meridian.core.errors import NotFound, PermissionDenied, ValidationError

LAST_USED_RESOLUTION = dt.timedelta(minutes=1)
RUNNER_TOKEN_TTL = dt.timedelta(days=7)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's id, role and scope."""

    token_id: str
    role: Role
    environments: tuple[str, ...]
    flow_run_id: str | None
    # Runner tokens: the runner epoch of the run they were minted for (decision 0018).
    runner_epoch: int | None = None

    @property
    def actor(self) -> str:
        return audit.token_actor(self.token_id)


def issue_api_token(
    session: Session,
    *,
    role: str,
    name: str,
    environments: Sequence[str],
    ttl_s: float | None,
    now: dt.datetime,
) -> str:
    """Store a new token (its hash only) and return the plaintext, shown once."""
    if role not in ROLES:
        raise ValidationError(f"role must be one of {', '.join(ROLES)} (got {role!r})")
    if ttl_s is not None and ttl_s <= 0:
        raise ValidationError("token lifetime must be positive")
    expires = now + dt.timedelta(seconds=ttl_s) if ttl_s else None
    environments = normalize(environments)
    token_id, plaintext = _store(session, role, name, list(environments), None, expires, now)
    audit.append(
        session,
        actor=audit.CLI,
        action="api_token.created",
        subject=token_id,
        details={"role": role, "name": name, "environments": list(environments)},
        now=now,
    )
    return plaintext


def issue_runner_token(
    session: Session,
    flow_run_id: str,
    now: dt.datetime,
    scope: Sequence[str] = (),
    *,
    epoch: int = 0,
) -> str:
    """A token that may drive one flow run only (minted by CreateRun for its runner); it
    carries the run's environment ``scope``, so its steps are held to the same limits, and
    the runner ``epoch`` it drives (calls from an older epoch are refused)."""
    expires = now + RUNNER_TOKEN_TTL
    name = runner_token_name(epoch)
    _, plaintext = _store(session, "runner", name, list(scope), flow_run_id, expires, now)
    return plaintext


def _store(
    session: Session,
    role: str,
    name: str,
    environments: list[str],
    flow_run_id: str | None,
    expires: dt.datetime | None,
    now: dt.datetime,
) -> tuple[str, str]:
    token_id, plaintext, secret_hash = new_api_token()
    session.add(
        ApiTokenRow(
            id=token_id,
            name=name[:255],
            secret_hash=secret_hash,
            role=role,
            environments=environments,
            flow_run_id=flow_run_id,
            created_at=now,
            expires_at=expires,
        )
    )
    return token_id, plaintext


def authenticate(session: Session, token: str, now: dt.datetime) -> Principal:
    token_id, secret = parse_api_token(token)
    row = session.get(ApiTokenRow, token_id)
    if row is None or not verify_secret(secret, row.secret_hash):
        raise PermissionDenied("API token is not valid")
    if row.revoked_at is not None:
        raise PermissionDenied("API token was revoked")
    if row.expires_at is not None and row.expires_at <= now:
        raise PermissionDenied("API token expired; create a new one")
    if row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION:
        row.last_used_at = now
    role = Role.RUNNER if row.role == "runner" else ROLES[row.role]
    epoch = runner_epoch_of(row.name) if role == Role.RUNNER else None
    return Principal(row.id, role, tuple(row.environments or ()), row.flow_run_id, epoch)


def list_api_tokens(session: Session) -> list[ApiTokenRow]:
    return list(
        session.scalars(
            select(ApiTokenRow).where(ApiTokenRow.role != "runner").order_by(ApiTokenRow.created_at)
        )
    )


def revoke_api_token(session: Session, token_id: str, now: dt.datetime) -> ApiTokenRow:
    row = session.get(ApiTokenRow, token_id.strip().removeprefix("mat_").split(".", 1)[0])
    if row is None:
        raise NotFound(f"no API token has the id {token_id!r} (see `meridian api-tokens list`)")
    if row.revoked_at is None:
        row.revoked_at = now
        audit.append(
            session,
            actor=audit.CLI,
            action="api_token.revoked",
            subject=row.id,
            details={"role": row.role, "name": row.name},
            now=now,
        )
    return row
