"""The console's edge: security headers, request bounds, sessions, CSRF and roles.

Every route is wrapped by ``page`` (GET) or ``action`` (POST): no handler runs without a live
session whose principal holds the role its gRPC twin needs, and no state-changing request runs
without the session's CSRF token and a same-origin check. Errors from the core error tree map
to one status each, as ``api/errors.py`` does for gRPC.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from control_plane.audit import acting_as
from control_plane.auth.api_token_store import authenticate
from control_plane.orchestration.fleet import HeartbeatPolicy
from control_plane.scheduler.registry import AgentRegistry
from control_plane.store.db import Store
from control_plane.telemetry.frames import FrameCounts
from control_plane.telemetry.metrics import Metrics
from control_plane.web.html import esc, layout, tag
from control_plane.web.roles import Action, check
from control_plane.web.sessions import COOKIE, Session, SessionTable
from meridian.core.errors import (
    ConflictError,
    LimitExceeded,
    MeridianError,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    ValidationError,
)

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 16 * 1024
MAX_QUERY_BYTES = 2048
MAX_FORM_FIELDS = 16
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = (
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),  # no-referrer would make Origin "null"
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"strict-transport-security", b"max-age=31536000"),
    (b"cache-control", b"no-store"),
)
STATUS = (
    (Unauthenticated, 401),
    (PermissionDenied, 403),
    (NotFound, 404),
    (ConflictError, 409),
    (LimitExceeded, 413),
    (ValidationError, 400),
)


@dataclass
class Console:
    """What the console's handlers work with (``app.state.console``)."""

    store: Store
    registry: AgentRegistry
    metrics: Metrics
    sessions: SessionTable
    heartbeats: HeartbeatPolicy
    metrics_public: bool = False
    frames: FrameCounts = dataclasses.field(default_factory=FrameCounts)


class Hardening:
    """ASGI middleware: security headers on every response; bounded query strings and bodies
    (a body must declare its length, and that length is capped, before anything reads it)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        problem = _bounds_problem(scope)
        if problem is not None:
            await Response(problem[1], status_code=problem[0])(scope, receive, _with_headers(send))
            return
        await self.app(scope, receive, _with_headers(send))


def _bounds_problem(scope: Scope) -> tuple[int, str] | None:
    if len(scope.get("query_string", b"")) > MAX_QUERY_BYTES:
        return 414, "query string too long"
    headers = dict(scope.get("headers") or ())
    if scope.get("path", "").startswith("/hooks/"):
        return None  # webhooks bound their own bodies, with JSON answers (web/webhooks.py)
    if scope["method"] in ("POST", "PUT", "PATCH", "DELETE"):
        length = headers.get(b"content-length")
        if length is None:
            return 411, "a request body must declare its length"
        if not length.isdigit() or int(length) > MAX_BODY_BYTES:
            return 413, f"request body above {MAX_BODY_BYTES} bytes"
    return None


def _with_headers(send: Send) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            names = {name for name, _ in SECURITY_HEADERS}
            headers = [(k, v) for k, v in message.get("headers", []) if k not in names]
            message = {**message, "headers": [*headers, *SECURITY_HEADERS]}
        await send(message)

    return wrapped


def console_of(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


async def current_session(request: Request) -> Session | None:
    """The caller's live session, re-checked against the token store every few seconds."""
    console = console_of(request)
    session = console.sessions.get(request.cookies.get(COOKIE))
    if session is not None and console.sessions.needs_check(session):
        try:
            principal = await console.store.run(authenticate, session.token, console.store.clock())
        except MeridianError:
            console.sessions.drop(session.id)
            return None
        console.sessions.checked(session, principal)
    return session


def error_page(status: int, message: str, session: Session | None = None) -> HTMLResponse:
    titles = {
        400: "Bad request",
        401: "Log in",
        403: "Forbidden",
        404: "Not found",
        409: "Conflict",
        413: "Too large",
    }
    title = titles.get(status, "Error")
    body = (
        tag("h1", title)
        + tag("p", message, class_="error")
        + tag("p", tag("a", "Back to runs", href="/runs"))
    )
    who = session.principal.role.name.lower() if session else ""
    return HTMLResponse(layout(title, body, who=who, csrf=session.csrf if session else ""), status)


def status_of(exc: MeridianError) -> int:
    for kind, status in STATUS:
        if isinstance(exc, kind):
            return status
    return 500


Handler = Callable[[Request, Session], Awaitable[Response]]
FormHandler = Callable[[Request, Session, Mapping[str, str]], Awaitable[Response]]


def page(needed: Action) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
    """A GET route: a session (else to the login page) holding ``needed``'s role."""

    def wrap(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        @functools.wraps(handler)
        async def endpoint(request: Request) -> Response:
            session = await current_session(request)
            if session is None:
                return RedirectResponse("/login", status_code=303)
            return await _guarded(handler, needed, session, request)

        return endpoint

    return wrap


def action(needed: Action) -> Callable[[FormHandler], Callable[[Request], Awaitable[Response]]]:
    """A POST route: same-origin, a session, the session's CSRF token, then the role."""

    def wrap(handler: FormHandler) -> Callable[[Request], Awaitable[Response]]:
        @functools.wraps(handler)
        async def endpoint(request: Request) -> Response:
            if not same_origin(request):
                return error_page(403, "cross-site request refused")
            session = await current_session(request)
            if session is None:
                return error_page(401, "your session has ended; log in again")
            try:
                form = await read_form(request)
            except ValidationError as exc:
                return error_page(400, str(exc), session)
            if not session.csrf_ok(form.get("csrf")):
                log.warning(
                    "console: refused a POST to %s without a valid CSRF token", request.url.path
                )
                return error_page(
                    403, "CSRF token missing or wrong; reload the page and try again", session
                )

            async def call(request: Request, session: Session) -> Response:
                acting_as(session.principal.actor)  # the audit log names the token
                return await handler(request, session, form)

            return await _guarded(call, needed, session, request)

        return endpoint

    return wrap


async def _guarded(
    handler: Handler, needed: Action, session: Session, request: Request
) -> Response:
    try:
        check(session.principal, needed)
        return await handler(request, session)
    except MeridianError as exc:
        status = status_of(exc)
        if status == 500:
            log.exception("console: %s failed", request.url.path)
            return error_page(500, "internal error", session)
        return error_page(status, str(exc), session)


async def read_form(request: Request) -> dict[str, str]:
    """The url-encoded form, bounded in fields and size; files are refused."""
    async with request.form(
        max_files=0, max_fields=MAX_FORM_FIELDS, max_part_size=MAX_BODY_BYTES
    ) as form:
        out: dict[str, str] = {}
        for key, value in form.multi_items():
            if not isinstance(value, str):
                raise ValidationError("file uploads are not accepted")
            out[key] = value
        return out


def same_origin(request: Request) -> bool:
    """Refuse what a browser tells us came from another site (Origin, Sec-Fetch-Site)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    host = request.headers.get("host", "")
    return origin in (f"https://{host}", f"http://{host}")


def query(request: Request, name: str, limit: int = 200) -> str:
    value = request.query_params.get(name, "").strip()
    if len(value) > limit:
        raise ValidationError(f"{name} is limited to {limit} characters")
    return value


def field(form: Mapping[str, str], name: str, limit: int, *, required: bool = False) -> str:
    value = form.get(name, "").strip()
    if len(value.encode()) > limit:
        raise ValidationError(f"{name} is limited to {limit} bytes")
    if required and not value:
        raise ValidationError(f"{name} is required")
    return value


__all__ = ["Console", "Hardening", "action", "esc", "page"]
