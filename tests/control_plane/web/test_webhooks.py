"""``POST /hooks/<id>`` against a real store (SQLite, and PostgreSQL when configured) through
Starlette's test client: the token, the idempotency key, the body bound, the JSON parameters,
the rate limit, and the audit record of every call."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from control_plane import audit
from control_plane.orchestration.deployment_specs import DeploymentSpec
from control_plane.orchestration.fleet import HeartbeatPolicy
from control_plane.scheduler.registry import AgentRegistry
from control_plane.store.db import Store
from control_plane.store.models import FlowRunRow
from control_plane.telemetry.metrics import Metrics
from control_plane.usecases.deployments import create_deployment, delete_deployment, set_paused
from control_plane.usecases.webhooks import CreatedWebhook, create_webhook, list_webhooks
from control_plane.web.app import build_app
from control_plane.web.guard import Console
from control_plane.web.sessions import SessionTable
from control_plane.web.webhooks import MAX_BODY_BYTES, TokenBuckets, WebhookLimits
from meridian.core.errors import NotFound, ValidationError
from tests.control_plane.usecases.helpers import T0, make_store, run_as

SCHEMA: dict[str, Any] = {
    "version": 1,
    "accepts_any": False,
    "parameters": [{"name": "n", "type": {"kind": "int"}, "required": False, "default": 1}],
}


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    yield from make_store(db_url)


INGEST = DeploymentSpec(
    name="ingest",
    flow_name="ingest",
    entrypoint="flows.py:ingest",
    bundle_sha256="b" * 64,
    parameter_schema=SCHEMA,
)


@pytest.fixture
def hook(store: Store) -> CreatedWebhook:
    run_as(store, "token:ops", T0, create_deployment, INGEST)
    created, _ = run_as(store, "token:ops", T0, create_webhook, "ingest", "github")
    return created


@pytest.fixture
def client(store: Store) -> Iterator[TestClient]:
    console = Console(
        store, AgentRegistry(), Metrics("test"), SessionTable(), heartbeats=HeartbeatPolicy(1, 6)
    )
    with TestClient(build_app(console), base_url="https://testserver") as c:
        yield c


def call(
    client: TestClient,
    hook: CreatedWebhook,
    body: Any = None,
    *,
    token: str | None = None,
    key: str | None = "delivery-1",
    **kw: Any,
) -> Any:
    headers = {"authorization": f"Bearer {token if token is not None else hook.token}"}
    if key is not None:
        headers["idempotency-key"] = key
    if body is not None and "content" not in kw:
        kw["content"] = json.dumps(body)
    return client.post(hook.url_path, headers=headers, **kw)


def runs(store: Store) -> list[FlowRunRow]:
    return store.run_sync(lambda s: list(s.scalars(select(FlowRunRow))))


def records(store: Store, action: str) -> list[Any]:
    found = store.run_sync(lambda s: audit.list_records(s, limit=1000))
    return [r for r in found if r.action == action]


def test_a_good_call_creates_a_run_and_the_audit_names_the_webhook(
    client: TestClient, store: Store, hook: CreatedWebhook
) -> None:
    response = call(client, hook, {"n": 7})
    assert response.status_code == 202, response.text
    run_id = response.json()["flow_run_id"]
    (run,) = runs(store)
    assert run.id == run_id and run.trigger == "webhook"
    assert json.loads(run.parameters_json) == {"n": 7}
    (record,) = records(store, "deployment.triggered")
    assert record.actor == f"webhook:{hook.webhook_id}" and record.subject == run_id
    assert hook.token not in json.dumps([r.details for r in records(store, "webhook.created")])


def test_a_bad_token_is_refused_and_audited_without_the_token(
    client: TestClient, store: Store, hook: CreatedWebhook
) -> None:
    wrong = hook.token[:-4] + "AAAA"
    for token, path in ((wrong, hook.url_path), ("", hook.url_path), (hook.token, "/hooks/nope")):
        response = client.post(
            path, headers={"authorization": f"Bearer {token}", "idempotency-key": "k"}
        )
        assert response.status_code == 401
        assert response.json()["error"].startswith("unknown webhook")
        assert response.headers["www-authenticate"] == "Bearer"
    assert runs(store) == []
    refused = records(store, "webhook.refused")
    assert len(refused) == 3
    assert wrong not in json.dumps([r.details for r in refused])


def test_a_replayed_idempotency_key_answers_the_first_run(
    client: TestClient, store: Store, hook: CreatedWebhook
) -> None:
    first = call(client, hook, {"n": 1}, key="delivery-42")
    again = call(client, hook, {"n": 2}, key="delivery-42")
    assert again.status_code == 409
    assert again.json()["flow_run_id"] == first.json()["flow_run_id"]
    assert len(runs(store)) == 1
    assert call(client, hook, {}, key="delivery-43").status_code == 202
    assert len(runs(store)) == 2


def test_the_idempotency_key_is_required_and_bounded(
    client: TestClient, store: Store, hook: CreatedWebhook
) -> None:
    assert call(client, hook, {}, key=None).status_code == 400
    response = call(client, hook, {}, key="k" * 256)
    assert response.status_code == 400 and "Idempotency-Key" in response.json()["error"]
    assert call(client, hook, {}, key="k" * 255).status_code == 202


def test_an_oversize_body_is_refused_declared_or_streamed(
    client: TestClient, store: Store, hook: CreatedWebhook
) -> None:
    big = b'{"n": 1, "pad": "' + b"x" * MAX_BODY_BYTES + b'"}'
    assert call(client, hook, content=big).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while read
        for _ in range(MAX_BODY_BYTES // 1024 + 2):
            yield b" " * 1024

    response = call(client, hook, content=chunks())
    assert response.status_code == 413 and "above" in response.json()["error"]
    assert runs(store) == []


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"[1, 2]", "must be a JSON object"),
        (b"{not json", "not valid JSON"),
        (b'{"n": "many"}', "n"),
        (b'{"m": 1}', "m"),
        # Deeper than the parser can go (was a 500), and deeper than a run may take.
        (b'{"n": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nested deeper than 200 levels"),
        (b'{"n": ' + b"[" * 900 + b"]" * 900 + b"}", "nested deeper than 200 levels"),
    ],
)
def test_a_body_that_is_no_parameters_is_a_400_naming_why(
    client: TestClient, store: Store, hook: CreatedWebhook, body: bytes, why: str
) -> None:
    response = call(client, hook, content=body)
    assert response.status_code == 400 and why in response.json()["error"]
    assert runs(store) == []


def test_an_empty_body_means_no_parameters(
    client: TestClient, store: Store, hook: CreatedWebhook
) -> None:
    assert call(client, hook, content=b"").status_code == 202
    assert json.loads(runs(store)[0].parameters_json) == {}


def test_calls_beyond_the_rate_get_429_with_retry_after(
    client: TestClient, store: Store, hook: CreatedWebhook
) -> None:
    client.app.state.webhook_limits = WebhookLimits(  # type: ignore[attr-defined]
        TokenBuckets(rate=0.01, burst=2), TokenBuckets(rate=1, burst=20)
    )
    assert [call(client, hook, {}, key=f"k{i}").status_code for i in range(2)] == [202, 202]
    limited = call(client, hook, {}, key="k3")
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert len(runs(store)) == 2


def test_token_buckets_refill_at_their_rate() -> None:
    buckets = TokenBuckets(rate=10, burst=2)
    assert [buckets.take("a", now=100.0) for _ in range(2)] == [0.0, 0.0]
    assert buckets.take("a", now=100.0) == pytest.approx(0.1)
    assert buckets.take("b", now=100.0) == 0.0  # each webhook has its own
    assert buckets.take("a", now=100.2) == 0.0  # refilled (one call per 0.1 s)


def test_create_webhook_checks_its_deployment_and_name(store: Store, hook: CreatedWebhook) -> None:
    with pytest.raises(NotFound):
        run_as(store, "token:ops", T0, create_webhook, "nope", "")
    with pytest.raises(ValidationError):
        run_as(store, "token:ops", T0, create_webhook, "ingest", "\n")
    other, _ = run_as(store, "token:ops", T0, create_webhook, "ingest", "")
    assert other.token != hook.token and other.token.startswith("mwh_")


def test_a_deleted_deployments_tokens_stay_dead_when_its_name_is_deployed_again(
    client: TestClient, store: Store, hook: CreatedWebhook
) -> None:
    run_as(store, "token:admin", T0, delete_deployment, "ingest")
    assert call(client, hook, {}, key="after-delete").status_code == 401
    (revoked,) = records(store, "webhook.revoked")
    assert json.loads(revoked.details)["reason"] == "deployment deleted"
    run_as(store, "token:ops", T0, create_deployment, INGEST)
    assert call(client, hook, {}, key="after-redeploy").status_code == 401
    (listed,) = store.run_sync(list_webhooks, "ingest")
    assert listed.webhook_id == hook.webhook_id and listed.revoked_at is not None
    assert runs(store) == []


def test_a_call_skipped_while_paused_leaves_its_key_for_after_the_resume(
    client: TestClient, store: Store, hook: CreatedWebhook
) -> None:
    run_as(store, "token:ops", T0, set_paused, "ingest", True)
    skipped = call(client, hook, {}, key="paused1")
    assert skipped.status_code == 202 and skipped.json()["state"] == "SKIPPED"
    assert runs(store) == []
    run_as(store, "token:ops", T0, set_paused, "ingest", False)
    resumed = call(client, hook, {}, key="paused1")
    assert resumed.status_code == 202, resumed.text
    (run,) = runs(store)
    assert resumed.json()["flow_run_id"] == run.id
    assert call(client, hook, {}, key="paused1").status_code == 409  # now it is used
