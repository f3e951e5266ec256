"""The console's ASGI application: routes, login and logout, ``/metrics`` and static files."""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from control_plane.auth.api_token_store import Principal, authenticate
from control_plane.store import queries
from control_plane.telemetry.fleet import agent_status
from control_plane.telemetry.metrics import CONTENT_TYPE
from control_plane.telemetry.queries import snapshot
from control_plane.web import actions, logs, pages, webhooks
from control_plane.web.guard import (
    Console,
    Hardening,
    console_of,
    current_session,
    error_page,
    read_form,
    same_origin,
)
from control_plane.web.html import form, layout, tag
from control_plane.web.roles import Action, check
from control_plane.web.sessions import COOKIE, LIFETIME_S, LOGIN_COOKIE, same_token
from meridian.core.errors import MeridianError, PermissionDenied, ValidationError

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"
MAX_TOKEN_CHARS = 200


def _cookie(response: Response, name: str, value: str, max_age: float) -> None:
    response.set_cookie(
        name, value, max_age=int(max_age), path="/", secure=True, httponly=True, samesite="strict"
    )


async def login_page(request: Request) -> Response:
    if await current_session(request) is not None:
        return RedirectResponse("/runs", status_code=303)
    return _login_form()


def _login_form(message: str = "", status: int = 200) -> Response:
    nonce = secrets.token_urlsafe(32)
    body = tag("h1", "Log in") + (tag("p", message, class_="error") if message else "")
    body += tag(
        "p",
        "Use an API token (",
        tag("code", "meridian api-tokens create"),
        "): its role and environments apply here exactly as on the gRPC API.",
    )
    body += form(
        "/login",
        nonce,
        tag(
            "label",
            "API token ",
            tag(
                "input",
                type="password",
                name="token",
                autocomplete="off",
                required=True,
                maxlength=str(MAX_TOKEN_CHARS),
            ),
        ),
        button="Log in",
    )
    response = HTMLResponse(layout("Log in", body), status)
    _cookie(response, LOGIN_COOKIE, nonce, 3600)
    return response


async def login(request: Request) -> Response:
    if not same_origin(request):
        return error_page(403, "cross-site request refused")
    try:
        data = await read_form(request)
    except ValidationError as exc:
        return error_page(400, str(exc))
    if not same_token(request.cookies.get(LOGIN_COOKIE), data.get("csrf")):
        return _login_form("The login form expired; try again.", 403)
    token = data.get("token", "").strip()
    console = console_of(request)
    try:
        if len(token) > MAX_TOKEN_CHARS:
            raise PermissionDenied("malformed API token")
        principal: Principal = await console.store.run(authenticate, token, console.store.clock())
        check(principal, Action.VIEW_RUNS)
    except MeridianError as exc:
        log.info("console: a login was refused (%s)", type(exc).__name__)
        return _login_form(f"Not logged in: {exc}", 401)
    session = console.sessions.create(token, principal)
    log.info("console: token %s logged in as %s", principal.token_id, principal.role.name.lower())
    response = RedirectResponse("/runs", status_code=303)
    _cookie(response, COOKIE, session.id, LIFETIME_S)
    response.delete_cookie(LOGIN_COOKIE, path="/", secure=True, httponly=True, samesite="strict")
    return response


async def logout(request: Request) -> Response:
    session = await current_session(request)
    if session is not None:
        if not same_origin(request):
            return error_page(403, "cross-site request refused")
        data = await read_form(request)
        if not session.csrf_ok(data.get("csrf")):
            return error_page(403, "CSRF token missing or wrong", session)
        console_of(request).sessions.drop(session.id)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="strict")
    return response


async def metrics(request: Request) -> Response:
    """Prometheus exposition; a viewer token (``Authorization: Bearer``) or a console session
    unless the listener was started with ``--metrics-public``."""
    console = console_of(request)
    if not console.metrics_public:
        try:
            await _metrics_caller(request, console)
        except PermissionDenied as exc:
            status = 403 if request.headers.get("authorization") else 401
            return Response(
                f"{exc}\n",
                status,
                media_type="text/plain",
                headers={"www-authenticate": "Bearer"} if status == 401 else None,
            )
    snap = await console.store.run(snapshot, console.store.clock())
    agents = await console.store.run(queries.all_agents)
    live = {s.agent.agent_id: s for s in console.registry.sessions()}
    now = console.store.clock()
    statuses = [
        (
            a.environment,
            agent_status(a, live.get(a.id), now, console.heartbeats),
        )
        for a, _ in agents
    ]
    return Response(console.metrics.render(snap, statuses, console.frames), media_type=CONTENT_TYPE)


async def _metrics_caller(request: Request, console: Console) -> None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        token = header[7:].strip()
        if len(token) > MAX_TOKEN_CHARS:
            raise PermissionDenied("malformed API token")
        try:
            principal = await console.store.run(authenticate, token, console.store.clock())
        except MeridianError as exc:
            raise PermissionDenied(str(exc)) from None
        check(principal, Action.VIEW_RUNS)
        return
    session = await current_session(request)
    if session is None:
        raise PermissionDenied("/metrics needs an API token: Authorization: Bearer mat_...")
    check(session.principal, Action.VIEW_RUNS)


async def home(request: Request) -> Response:
    return RedirectResponse("/runs", status_code=303)


def build_app(console: Console) -> Starlette:
    routes = [
        Route("/", home),
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/runs", pages.runs),
        Route("/runs/{run_id}", pages.run),
        Route("/runs/{run_id}/logs", logs.run_logs),
        Route("/runs/{run_id}/cancel", actions.cancel, methods=["POST"]),
        Route("/runs/{run_id}/decide", actions.decide, methods=["POST"]),
        Route("/fleet", pages.fleet),
        Route("/fleet/drain", actions.drain, methods=["POST"]),
        Route("/fleet/revoke", actions.revoke, methods=["POST"]),
        Route("/audit", pages.audit_log),
        Route("/audit/export.json", pages.audit_export),
        Route("/metrics", metrics),
        Route("/hooks/{webhook_id}", webhooks.receive, methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes)
    app.state.console = console
    app.state.webhook_limits = webhooks.WebhookLimits.default()
    app.add_middleware(Hardening)
    return app
