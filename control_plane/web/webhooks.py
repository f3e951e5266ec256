"""``POST /hooks/<webhook id>``: a run of a deployment, triggered by another system.

Not a console page: no session, no cookie, no CSRF token — the caller is authenticated by the
webhook's own token (``Authorization: Bearer mwh_...``, compared by hash in constant time) and
may do nothing but trigger its one deployment. Every answer is JSON:

* 202 ``{"flow_run_id": ...}`` — a run was created (``"state": "SKIPPED"`` and no run id when
  the deployment's concurrency overflow or a pause skipped it);
* 400 — no ``Idempotency-Key`` header (1-255 characters), a body that is not a JSON object
  (or nests deeper than ``jsondepth.MAX_DEPTH`` levels), or parameters the deployment's flow
  does not accept (the message says which);
* 401 — unknown webhook, revoked or wrong token (audited as ``webhook.refused``, never the
  token itself);
* 409 ``{"flow_run_id": ...}`` — the idempotency key was used before: that run, no new one;
* 413 — a body above ``MAX_BODY_BYTES`` (refused from its declared length, or as soon as the
  bytes read pass it);
* 429 with ``Retry-After`` — more calls than the webhook's rate (a token bucket per webhook).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from control_plane.usecases.webhooks import (
    MAX_KEY_CHARS,
    MAX_TOKEN_CHARS,
    WebhookCaller,
    authenticate_webhook,
    record_refusal,
    trigger_by_webhook,
)
from control_plane.web.guard import console_of, status_of
from meridian.core import jsondepth
from meridian.core.errors import ValidationError

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 64 * 1024
RATE_PER_S = 10.0
BURST = 20.0
# Refusals are audited at most this often (an unauthenticated flood must not fill the audit
# log); beyond it they are only logged.
REFUSAL_AUDITS_PER_S = 1.0
REFUSAL_AUDIT_BURST = 20.0
MAX_BUCKETS = 10_000


@dataclass
class _Bucket:
    tokens: float
    at: float


class TokenBuckets:
    """Token buckets by key: ``rate`` per second, at most ``burst`` saved up. Thread-safe;
    at most ``MAX_BUCKETS`` keys (the least recently used go first)."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def take(self, key: str, now: float | None = None) -> float:
        """0 when a call may go ahead now (and counts it), else the seconds to wait."""
        now = time.monotonic() if now is None else now
        with self._lock:
            bucket = self._buckets.pop(key, None) or _Bucket(self.burst, now)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
            bucket.at = now
            self._buckets[key] = bucket  # most recently used last
            if len(self._buckets) > MAX_BUCKETS:
                del self._buckets[next(iter(self._buckets))]
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / self.rate


@dataclass
class WebhookLimits:
    """The rate limits of the webhook endpoint, kept for the listener's lifetime."""

    calls: TokenBuckets
    refusal_audits: TokenBuckets

    @classmethod
    def default(cls) -> WebhookLimits:
        return cls(
            TokenBuckets(RATE_PER_S, BURST),
            TokenBuckets(REFUSAL_AUDITS_PER_S, REFUSAL_AUDIT_BURST),
        )


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    headers = {"www-authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": message, **extra}, status, headers=headers)


async def receive(request: Request) -> Response:
    console = console_of(request)
    limits: WebhookLimits = request.app.state.webhook_limits
    webhook_id = str(request.path_params.get("webhook_id", ""))[:64]
    remote = request.client.host if request.client else ""
    caller = await _authenticate(request, webhook_id)
    if caller is None:
        if limits.refusal_audits.take("refusals") == 0.0:
            await console.store.transact(
                record_refusal, webhook_id, "unknown webhook, revoked or wrong token", remote
            )
        else:
            log.warning(
                "webhook %s: refused a call from %s (too many to audit)", webhook_id, remote
            )
        return _error(401, "unknown webhook, or a missing, revoked or wrong token")
    wait = limits.calls.take(caller.webhook_id)
    if wait > 0:
        response = _error(429, f"more than {RATE_PER_S:g} calls per second to this webhook")
        response.headers["retry-after"] = str(max(1, math.ceil(wait)))
        return response
    key = request.headers.get("idempotency-key", "").strip()
    if not key or len(key) > MAX_KEY_CHARS or not key.isprintable():
        return _error(400, f"an Idempotency-Key header of 1-{MAX_KEY_CHARS} characters is needed")
    too_big = _declared_too_big(request)
    if too_big is not None:
        return too_big
    body = await _read_bounded(request)
    if body is None:
        return _error(413, f"the request body is above {MAX_BODY_BYTES} bytes")
    try:
        parameters = _parameters(body)
    except ValidationError as exc:
        return _error(400, str(exc))
    result = await console.store.transact(trigger_by_webhook, caller, key, parameters, remote)
    if result.error is not None:
        return _error(status_of(result.error), str(result.error))
    if result.replayed:
        return _error(
            409,
            f"idempotency key {key!r} was used before: no new run",
            flow_run_id=result.flow_run_id or "",
        )
    return JSONResponse(
        {"flow_run_id": result.flow_run_id or "", "state": result.state, "message": result.message},
        202,
    )


async def _authenticate(request: Request, webhook_id: str) -> WebhookCaller | None:
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("bearer "):
        return None
    token = header[7:].strip()
    if not token or len(token) > MAX_TOKEN_CHARS:
        return None
    console = console_of(request)
    caller: WebhookCaller | None = await console.store.run(authenticate_webhook, webhook_id, token)
    return caller


def _declared_too_big(request: Request) -> Response | None:
    length = request.headers.get("content-length")
    if length is None:
        return None  # chunked: counted while read
    if not length.isdigit():
        return _error(400, "Content-Length must be a number of bytes")
    if int(length) > MAX_BODY_BYTES:
        return _error(413, f"the request body is above {MAX_BODY_BYTES} bytes")
    return None


async def _read_bounded(request: Request) -> bytes | None:
    """The body, or None as soon as more than ``MAX_BODY_BYTES`` arrived (not read further)."""
    parts: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        parts.append(chunk)
    return b"".join(parts)


def _parameters(body: bytes) -> dict[str, Any]:
    """The body as the run's parameters: a JSON object (an empty body is no parameters)."""
    if not body.strip():
        return {}
    try:
        value = jsondepth.loads(body, "the body")
    except ValueError as exc:  # not UTF-8 or not JSON
        raise ValidationError(f"the body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValidationError(
            f"the body must be a JSON object of parameters, got a JSON {type(value).__name__}"
        )
    return value
