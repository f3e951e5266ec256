"""Webhook tokens of deployments, and runs triggered through them.

A webhook is a token that may trigger one deployment and nothing else: ``CreateWebhook``
(operators) shows it once and keeps only its SHA-256. ``POST /hooks/<webhook id>`` on the web
listener (``control_plane/web/webhooks.py``) checks the bearer token against that hash in
constant time (:func:`authenticate_webhook`, a read), then triggers the deployment with the
request's idempotency key (:func:`trigger_by_webhook`). A refused call leaves an audit record
without the token (:func:`record_refusal`). ``ListWebhooks`` shows a deployment's webhooks
(never a token); ``RevokeWebhook`` (operators, audited ``webhook.revoked``) makes its token
answer 401 from then on. Deleting a deployment revokes its webhooks the same way
(:func:`revoke_deployment_webhooks`), so deploying the name again does not revive them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from control_plane import audit
from control_plane.store.ids import new_id
from control_plane.store.models import DeploymentRow, WebhookRow
from control_plane.store.tx import Tx
from control_plane.usecases.savepoints import attempt
from meridian.core.errors import MeridianError, NotFound, ValidationError

TOKEN_PREFIX = "mwh_"
MAX_TOKEN_CHARS = 200
MAX_KEY_CHARS = 255
MAX_NAME_CHARS = 128
_WEBHOOK_ID = re.compile(r"[0-9a-f-]{1,36}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@ -]{0,127}")
# Compared against when the webhook is unknown, so a miss costs what a hit costs.
_NO_HASH = hashlib.sha256(b"no such webhook").hexdigest()


@dataclass(frozen=True)
class CreatedWebhook:
    webhook_id: str
    token: str  # shown once
    url_path: str


@dataclass(frozen=True)
class WebhookCaller:
    """A webhook whose token checked out: what it may trigger."""

    webhook_id: str
    name: str
    deployment_id: str


@dataclass(frozen=True)
class WebhookResult:
    """What a webhook call did: a new run, the run an earlier call with the same key made
    (``replayed``), none because the deployment skipped it, or a refusal with its error."""

    flow_run_id: str | None
    replayed: bool = False
    state: str = ""
    message: str = ""
    error: MeridianError | None = None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def url_path(webhook_id: str) -> str:
    return f"/hooks/{webhook_id}"


def create_webhook(tx: Tx, deployment: str, name: str = "") -> CreatedWebhook:
    """A new webhook token for the deployment named ``deployment`` (audited, token never)."""
    name = (name or "default").strip()
    if not _NAME.fullmatch(name):
        raise ValidationError(
            f"webhook name must be 1-{MAX_NAME_CHARS} letters, digits, spaces or _.:@- "
            "starting with a letter or digit"
        )
    row = tx.session.scalars(
        select(DeploymentRow).where(
            DeploymentRow.name == deployment, DeploymentRow.deleted_at.is_(None)
        )
    ).first()
    if row is None:
        raise NotFound(f"deployment {deployment!r} does not exist")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    webhook = WebhookRow(
        id=new_id(),
        deployment_id=row.id,
        name=name,
        token_hash=hash_token(token),
        created_at=tx.now,
        created_by=tx.actor[:128],
        revoked_at=None,
    )
    tx.session.add(webhook)
    audit.append(
        tx.session,
        actor=tx.actor,
        action="webhook.created",
        subject=row.id,
        details={"webhook_id": webhook.id, "name": name, "deployment": deployment},
        now=tx.now,
    )
    return CreatedWebhook(webhook.id, token, url_path(webhook.id))


def authenticate_webhook(session: Session, webhook_id: str, token: str) -> WebhookCaller | None:
    """The webhook ``webhook_id`` if ``token`` is its live token, else None (a read).

    The token's hash is compared in constant time; an unknown id is compared against a fixed
    hash, so neither the id nor the token can be probed by timing."""
    row = session.get(WebhookRow, webhook_id) if _WEBHOOK_ID.fullmatch(webhook_id) else None
    presented = hash_token(token[:MAX_TOKEN_CHARS])
    stored = row.token_hash if row is not None else _NO_HASH
    matches = hmac.compare_digest(presented, stored)
    if row is None or not matches or row.revoked_at is not None:
        return None
    deployment = session.get(DeploymentRow, row.deployment_id)
    if deployment is None or deployment.deleted_at is not None:
        return None
    return WebhookCaller(row.id, row.name, row.deployment_id)


def record_refusal(tx: Tx, webhook_id: str, reason: str, remote: str) -> None:
    """Audit a refused call (``webhook.refused``): the id it named, why, from where; never
    the token it presented."""
    audit.append(
        tx.session,
        actor=f"webhook:{webhook_id[:40]}",
        action="webhook.refused",
        subject=webhook_id[:40],
        details={"reason": reason, "remote": remote[:64]},
        now=tx.now,
    )


def trigger_by_webhook(
    tx: Tx,
    caller: WebhookCaller,
    idempotency_key: str,
    parameters: Mapping[str, Any],
    remote: str,
) -> WebhookResult:
    """Trigger the caller's deployment; a refusal (parameters, a paused or deleted deployment)
    is audited as ``webhook.refused`` and answered, not raised, so its record commits."""
    # Imported here: deployments imports the run use cases, which import what ends runs.
    from control_plane.usecases import deployments

    if not idempotency_key or len(idempotency_key) > MAX_KEY_CHARS:
        raise ValidationError(f"the Idempotency-Key header must be 1-{MAX_KEY_CHARS} characters")
    webhook = tx.session.get(WebhookRow, caller.webhook_id)
    deployment = tx.session.get(DeploymentRow, caller.deployment_id)
    if webhook is None or webhook.revoked_at is not None or deployment is None:
        raise NotFound("this webhook no longer exists")  # revoked since it was checked
    source = deployments.TriggerSource(
        "webhook",
        actor=f"webhook:{caller.webhook_id}",
        detail={
            "webhook_id": caller.webhook_id,
            "webhook": caller.name,
            "idempotency_key": idempotency_key,
            "remote": remote[:64],
        },
    )
    outcome = attempt(
        tx,
        deployments.trigger_deployment,
        deployment.name,
        dict(parameters),
        source=source,
        idempotency_key=idempotency_key,
    )
    if isinstance(outcome, MeridianError):
        record_refusal(tx, caller.webhook_id, str(outcome), remote)
        return WebhookResult(None, error=outcome)
    return WebhookResult(outcome.flow_run_id, outcome.existing, outcome.state, outcome.message)


@dataclass(frozen=True)
class WebhookView:
    """A webhook as people see it (never its token or hash)."""

    webhook_id: str
    deployment: str
    name: str
    created_at: dt.datetime
    created_by: str
    revoked_at: dt.datetime | None


MAX_LISTED = 1000


def list_webhooks(session: Session, deployment: str) -> list[WebhookView]:
    """The webhooks of deployment ``deployment``, live and revoked, oldest first (a read)."""
    row = _deployment(session, deployment)
    hooks = session.scalars(
        select(WebhookRow)
        .where(WebhookRow.deployment_id == row.id)
        .order_by(WebhookRow.created_at, WebhookRow.id)
        .limit(MAX_LISTED)
    )
    return [_view(h, row.name) for h in hooks]


def revoke_webhook(tx: Tx, deployment: str, webhook_id: str) -> WebhookView:
    """Revoke a webhook of ``deployment`` (audited): its token is refused from now on (401).
    Revoking one already revoked changes nothing and records nothing."""
    row = _deployment(tx.session, deployment)
    hook = tx.session.get(WebhookRow, webhook_id) if _WEBHOOK_ID.fullmatch(webhook_id) else None
    if hook is None or hook.deployment_id != row.id:
        raise NotFound(f"deployment {deployment!r} has no webhook {webhook_id[:40]!r}")
    if hook.revoked_at is None:
        _revoke(tx, hook, row)
    return _view(hook, row.name)


def revoke_deployment_webhooks(tx: Tx, deployment: DeploymentRow, why: str) -> list[str]:
    """Revoke every live webhook of ``deployment`` (each audited ``webhook.revoked`` with
    ``why``): a deleted deployment's tokens stay dead when its name is deployed again."""
    hooks = tx.session.scalars(
        select(WebhookRow)
        .where(WebhookRow.deployment_id == deployment.id, WebhookRow.revoked_at.is_(None))
        .order_by(WebhookRow.created_at, WebhookRow.id)
        .with_for_update()
    ).all()
    for hook in hooks:
        _revoke(tx, hook, deployment, reason=why)
    return [hook.id for hook in hooks]


def _revoke(tx: Tx, hook: WebhookRow, deployment: DeploymentRow, **why: str) -> None:
    hook.revoked_at = tx.now
    audit.append(
        tx.session,
        actor=tx.actor,
        action="webhook.revoked",
        subject=deployment.id,
        details={"webhook_id": hook.id, "name": hook.name, "deployment": deployment.name, **why},
        now=tx.now,
    )


def _deployment(session: Session, name: str) -> DeploymentRow:
    row = session.scalars(
        select(DeploymentRow).where(DeploymentRow.name == name, DeploymentRow.deleted_at.is_(None))
    ).first()
    if row is None:
        raise NotFound(f"deployment {name!r} does not exist")
    return row


def _view(hook: WebhookRow, deployment: str) -> WebhookView:
    return WebhookView(
        hook.id, deployment, hook.name, hook.created_at, hook.created_by, hook.revoked_at
    )
