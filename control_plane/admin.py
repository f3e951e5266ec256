"""Operations run on the control-plane host against its store (no server needed)."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from control_plane.auth.api_token_store import (
    issue_api_token,
    list_api_tokens,
    revoke_api_token,
)
from control_plane.auth.enrollment import (
    create_join_token_row,
    list_join_tokens,
    revoke_join_token,
)
from control_plane.store.db import Store, sqlite_url
from control_plane.store.models import ApiTokenRow, JoinTokenRow
from meridian.core.clock import utcnow


def create_join_token(
    data_dir: Path,
    environment: str,
    *,
    ttl_s: float = 3600.0,
    db_url: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> str:
    """Issue a one-time join token for ``environment``; only its hash is stored.

    ``labels`` are pinned: the agent it enrolls carries exactly these and no others.
    """
    with _store(data_dir, db_url) as store:
        now = utcnow()
        return store.run_sync(create_join_token_row, environment, ttl_s, now, labels)


@dataclass(frozen=True)
class JoinTokenInfo:
    token_id: str
    environment: str
    created_at: dt.datetime
    expires_at: dt.datetime
    state: str  # unused | used | expired | revoked
    used_by_agent_id: str | None
    labels: Mapping[str, str] = field(default_factory=dict)  # pinned on the agent it enrolls


def _info(row: JoinTokenRow, now: dt.datetime) -> JoinTokenInfo:
    if row.revoked_at is not None:
        state = "revoked"
    elif row.used_at is not None:
        state = "used"
    elif row.expires_at <= now:
        state = "expired"
    else:
        state = "unused"
    return JoinTokenInfo(
        row.id,
        row.environment,
        row.created_at,
        row.expires_at,
        state,
        row.used_by_agent_id,
        dict(row.labels or {}),
    )


def join_tokens(data_dir: Path, *, db_url: str | None = None) -> list[JoinTokenInfo]:
    """Every join token ever issued (never a secret: only ids, environments and states)."""
    now = utcnow()
    with _store(data_dir, db_url) as store:
        return store.run_sync(lambda s: [_info(r, now) for r in list_join_tokens(s)])


def revoke_token(data_dir: Path, token_id: str, *, db_url: str | None = None) -> JoinTokenInfo:
    now = utcnow()
    with _store(data_dir, db_url) as store:
        return store.run_sync(lambda s: _info(revoke_join_token(s, token_id, now), now))


@contextlib.contextmanager
def _store(data_dir: Path, db_url: str | None) -> Iterator[Store]:
    store = Store(db_url or sqlite_url(Path(data_dir) / "meridian.db"))
    try:
        store.migrate()
        yield store
    finally:
        store.close()


@dataclass(frozen=True)
class ApiTokenInfo:
    token_id: str
    name: str
    role: str
    environments: tuple[str, ...]
    created_at: dt.datetime
    expires_at: dt.datetime | None
    last_used_at: dt.datetime | None
    state: str  # active | expired | revoked


def create_api_token(
    data_dir: Path,
    role: str,
    *,
    name: str = "",
    environments: Sequence[str] = (),
    ttl_s: float | None = None,
    db_url: str | None = None,
) -> str:
    """Issue an API token (viewer, operator or admin); only its hash is stored."""
    with _store(data_dir, db_url) as store:
        return store.run_sync(
            lambda s: issue_api_token(
                s,
                role=role,
                name=name,
                environments=environments,
                ttl_s=ttl_s,
                now=utcnow(),
            )
        )


def api_tokens(data_dir: Path, *, db_url: str | None = None) -> list[ApiTokenInfo]:
    now = utcnow()
    with _store(data_dir, db_url) as store:
        return store.run_sync(lambda s: [_api_info(r, now) for r in list_api_tokens(s)])


def revoke_api_token_by_id(
    data_dir: Path, token_id: str, *, db_url: str | None = None
) -> ApiTokenInfo:
    now = utcnow()
    with _store(data_dir, db_url) as store:
        return store.run_sync(lambda s: _api_info(revoke_api_token(s, token_id, now), now))


def _api_info(row: ApiTokenRow, now: dt.datetime) -> ApiTokenInfo:
    if row.revoked_at is not None:
        state = "revoked"
    elif row.expires_at is not None and row.expires_at <= now:
        state = "expired"
    else:
        state = "active"
    return ApiTokenInfo(
        row.id,
        row.name,
        row.role,
        tuple(row.environments or ()),
        row.created_at,
        row.expires_at,
        row.last_used_at,
        state,
    )
