"""Sessions, CSRF, roles, scopes and the security headers of the console, against a real store
(SQLite) through Starlette's test client; no browser needed."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from control_plane.auth.api_token_store import Principal, issue_api_token
from control_plane.auth.api_tokens import Role
from control_plane.orchestration.fleet import HeartbeatPolicy
from control_plane.scheduler.registry import AgentRegistry
from control_plane.store.db import Store, sqlite_url
from control_plane.telemetry.metrics import Metrics
from control_plane.web.app import build_app
from control_plane.web.guard import CSP, Console
from control_plane.web.roles import Action, allowed
from control_plane.web.sessions import IDLE_S, RECHECK_S, SessionTable
from meridian.core.clock import utcnow


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(sqlite_url(tmp_path / "m.db"))
    s.migrate()
    yield s
    s.close()


def token(store: Store, role: str, environments: tuple[str, ...] = ()) -> str:
    return store.run_sync(
        lambda session: issue_api_token(
            session, role=role, name=role, environments=environments, ttl_s=None, now=utcnow()
        )
    )


@pytest.fixture
def client(store: Store) -> Iterator[TestClient]:
    console = Console(
        store, AgentRegistry(), Metrics("test"), SessionTable(), heartbeats=HeartbeatPolicy(1, 6)
    )
    with TestClient(build_app(console), base_url="https://testserver") as c:
        yield c


def log_in(client: TestClient, api_token: str) -> str:
    page = client.get("/login")
    nonce = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert nonce is not None
    response = client.post("/login", data={"csrf": nonce[1], "token": api_token})
    assert response.status_code == 200, response.text  # followed to /runs
    csrf = re.search(r'name="csrf" value="([^"]+)"', response.text)
    assert csrf is not None
    return csrf[1]


def test_every_response_carries_the_security_headers(client: TestClient) -> None:
    response = client.get("/login")
    assert response.headers["content-security-policy"] == CSP
    assert "'unsafe-inline'" not in CSP and "frame-ancestors 'none'" in CSP
    assert response.headers["x-frame-options"] == "DENY"
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "secure" in cookie and "samesite=strict" in cookie


def test_pages_need_a_session(client: TestClient) -> None:
    for path in ("/runs", "/fleet", "/audit", "/runs/0123456789ab"):
        response = client.get(path, follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"] == "/login"
    assert client.post("/fleet/drain", data={"agent": "x"}).status_code == 401
    assert client.get("/metrics").status_code == 401


def test_login_refuses_bad_tokens_without_echoing_them(client: TestClient) -> None:
    page = client.get("/login")
    nonce = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert nonce is not None
    secret = "mat_0123456789abcdef." + "s" * 43
    response = client.post("/login", data={"csrf": nonce[1], "token": secret})
    assert response.status_code == 401 and secret not in response.text
    assert client.post("/login", data={"csrf": "forged", "token": secret}).status_code == 403


def test_login_and_session_cookie(client: TestClient, store: Store) -> None:
    csrf = log_in(client, token(store, "viewer"))
    assert client.get("/fleet").status_code == 200
    session_cookie = client.cookies.get("meridian_session")
    assert session_cookie and "mat_" not in session_cookie
    assert client.post("/logout", data={"csrf": csrf}).status_code == 200
    assert client.get("/fleet", follow_redirects=False).status_code == 303


def test_csrf_and_roles_on_actions(client: TestClient, store: Store) -> None:
    csrf = log_in(client, token(store, "viewer"))
    missing = client.post("/fleet/drain", data={"agent": "a1"})
    assert missing.status_code == 403 and "CSRF" in missing.text
    assert client.post("/fleet/drain", data={"agent": "a1", "csrf": csrf + "x"}).status_code == 403
    denied = client.post("/fleet/drain", data={"agent": "a1", "csrf": csrf})
    assert denied.status_code == 403 and "admin role" in denied.text
    cross = client.post(
        "/fleet/drain", data={"agent": "a1", "csrf": csrf}, headers={"origin": "https://evil.test"}
    )
    assert cross.status_code == 403 and "cross-site" in cross.text


def test_admin_reaches_the_use_case(client: TestClient, store: Store) -> None:
    csrf = log_in(client, token(store, "admin"))
    response = client.post("/fleet/drain", data={"agent": "nope", "csrf": csrf})
    assert response.status_code == 404 and "no agent" in response.text


def test_scoped_tokens_do_not_read_the_audit_log(client: TestClient, store: Store) -> None:
    log_in(client, token(store, "admin", ("aws-prod",)))
    assert client.get("/audit").status_code == 403
    assert client.get("/audit/export.json").status_code == 403


def test_audit_export_and_metrics_for_an_unscoped_viewer(client: TestClient, store: Store) -> None:
    viewer = token(store, "viewer")
    log_in(client, viewer)
    export = client.get("/audit/export.json").json()
    assert export["verified"] is True and export["records"][0]["action"] == "api_token.created"
    metrics = client.get("/metrics", headers={"authorization": f"Bearer {viewer}"})
    assert metrics.status_code == 200 and "meridian_runs_finished" in metrics.text


def test_bounded_requests(client: TestClient, store: Store) -> None:
    csrf = log_in(client, token(store, "admin"))
    assert client.get("/runs?flow=" + "x" * 3000).status_code == 414
    assert client.get("/runs?flow=" + "x" * 300).status_code == 400
    big = client.post("/fleet/drain", data={"agent": "a", "csrf": csrf, "reason": "r" * 20_000})
    assert big.status_code == 413


def test_session_table_expiry_and_recheck() -> None:
    now = [1000.0]
    table = SessionTable(clock=lambda: now[0])
    principal = Principal("t1", Role.VIEWER, (), None)
    session = table.create("mat_secret", principal)
    assert table.get(session.id) is session and not table.needs_check(session)
    now[0] += RECHECK_S + 1
    assert table.needs_check(session)
    table.checked(session, principal)
    assert not table.needs_check(session)
    assert session.csrf_ok(session.csrf) and not session.csrf_ok("") and not session.csrf_ok(None)
    now[0] += IDLE_S + 1
    assert table.get(session.id) is None and len(table) == 0


def test_roles_follow_the_grpc_table() -> None:
    viewer = Principal("v", Role.VIEWER, (), None)
    operator = Principal("o", Role.OPERATOR, (), None)
    runner = Principal("r", Role.RUNNER, (), "run-1")
    assert allowed(viewer, Action.VIEW_RUN) and not allowed(viewer, Action.CANCEL)
    assert allowed(operator, Action.DECIDE) and not allowed(operator, Action.REVOKE)
    assert not allowed(runner, Action.VIEW_RUN)
