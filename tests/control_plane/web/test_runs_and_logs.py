"""The Runs page's environment and time filters and the Run page's logs endpoint, against a real
store (SQLite) holding runs in two environments, through Starlette's test client."""

from __future__ import annotations

import datetime as dt
import re
import uuid

from sqlalchemy.orm import Session
from starlette.testclient import TestClient

from control_plane.store import queries
from control_plane.store.db import Store
from control_plane.store.models import AttemptRow, BundleRow, FlowRunRow, LogRow, StepRunRow
from control_plane.web.logs import PAGE_LINES
from meridian.core.clock import utcnow
from meridian.core.spec import StepSpec
from meridian.core.states import AttemptState, RunState, StepState
from tests.control_plane.web.test_guard import client, log_in, store, token

__all__ = ["client", "store"]  # fixtures used here


def add_run(
    store: Store,
    flow: str,
    environment: str,
    created: dt.datetime,
    *,
    logs: int = 0,
    scope: tuple[str, ...] = (),
) -> str:
    run_id = str(uuid.uuid4())

    def write(session: Session) -> None:
        if session.get(BundleRow, "0" * 64) is None:
            session.add(BundleRow(sha256="0" * 64, size=0, data=b"", created_at=created))
            session.flush()
        session.add(
            FlowRunRow(
                id=run_id,
                flow_name=flow,
                entrypoint="flows.py:" + flow,
                trigger="manual",
                parameters_json="{}",
                bundle_sha256="0" * 64,
                state=RunState.RUNNING,
                created_at=created,
                started_at=created,
                scope=list(scope),
            )
        )
        step_id = str(uuid.uuid4())
        session.flush()
        session.add(
            StepRunRow(
                id=step_id,
                flow_run_id=run_id,
                key="work#1",
                name="work",
                spec=StepSpec(name="work", module="flows", function="work"),
                inputs_json="{}",
                inputs_digest="0" * 64,
                state=StepState.RUNNING,
                created_at=created,
            )
        )
        attempt_id = str(uuid.uuid4())
        session.flush()
        session.add(
            AttemptRow(
                id=attempt_id,
                step_run_id=step_id,
                flow_run_id=run_id,
                number=1,
                state=AttemptState.RUNNING,
                environment=environment,
                provider="process",
                queued_at=created,
                not_before=created,
                schedule_deadline=created + dt.timedelta(hours=1),
            )
        )
        for n in range(logs):
            session.add(
                LogRow(
                    flow_run_id=run_id,
                    step_run_id=step_id,
                    attempt_id=attempt_id,
                    step_key="work#1",
                    attempt_number=1,
                    stream="stdout",
                    text=f"<b>line {n}</b>",
                    at=created,
                )
            )
        session.commit()

    store.run_sync(write)
    return run_id


def shown_runs(client: TestClient, **params: str) -> set[str]:
    response = client.get("/runs", params=params)
    assert response.status_code == 200, response.text
    return set(re.findall(r'href="/runs/([0-9a-f-]{36})"', response.text))


def test_environment_and_since_filters_are_exact(client: TestClient, store: Store) -> None:
    now = utcnow()
    old_aws = add_run(store, "etl", "aws-prod", now - dt.timedelta(days=2))
    new_aws = add_run(store, "etl", "aws-prod", now - dt.timedelta(minutes=5))
    new_gcp = add_run(store, "etl", "gcp-prod", now - dt.timedelta(minutes=5))
    log_in(client, token(store, "viewer"))

    assert {old_aws, new_aws, new_gcp} <= shown_runs(client)
    assert shown_runs(client, environment="aws-prod") == {old_aws, new_aws}
    assert shown_runs(client, environment="gcp-prod") == {new_gcp}
    assert shown_runs(client, since="1h") == {new_aws, new_gcp}
    assert shown_runs(client, environment="aws-prod", since="24h") == {new_aws}
    assert shown_runs(client, environment="azure") == set()
    assert client.get("/runs", params={"environment": "x" * 300}).status_code == 400

    # the query itself: the time cut is in SQL, not on the newest rows afterwards
    for _ in range(3):
        add_run(store, "etl", "gcp-prod", now)
    rows = store.run_sync(
        lambda s: queries.list_runs(
            s, 2, None, "", environment="aws-prod", since=now - dt.timedelta(days=3)
        )
    )
    assert [r[0].id for r in rows] == [new_aws, old_aws]
    # existing positional callers keep working
    assert len(store.run_sync(lambda s: queries.list_runs(s, 50, None, "etl"))) == 6


def test_logs_endpoint_needs_a_session_and_pages_after_an_id(
    client: TestClient, store: Store
) -> None:
    run_id = add_run(store, "etl", "aws-prod", utcnow(), logs=PAGE_LINES + 20)
    assert client.get(f"/runs/{run_id}/logs").status_code == 401
    log_in(client, token(store, "viewer"))

    first = client.get(f"/runs/{run_id}/logs", params={"step": "work#1"})
    assert first.status_code == 200
    assert first.headers["content-type"].startswith("application/json")
    page = first.json()
    assert len(page["lines"]) == PAGE_LINES and page["more"] is True
    assert page["lines"][0]["text"] == "<b>line 0</b>"  # raw text: the page sets textContent
    rest = client.get(
        f"/runs/{run_id}/logs", params={"step": "work#1", "after": str(page["next_after"])}
    ).json()
    assert [line["text"] for line in rest["lines"]] == [
        f"<b>line {n}</b>" for n in range(PAGE_LINES, PAGE_LINES + 20)
    ]
    assert rest["more"] is False
    done = client.get(
        f"/runs/{run_id}/logs", params={"step": "work#1", "after": str(rest["next_after"])}
    ).json()
    assert done["lines"] == [] and done["next_after"] == rest["next_after"]
    assert client.get(f"/runs/{run_id}/logs", params={"step": "other#1"}).json()["lines"] == []
    small = client.get(f"/runs/{run_id}/logs", params={"limit": "3"}).json()
    assert len(small["lines"]) == 3

    for bad in ({"limit": "0"}, {"limit": str(PAGE_LINES + 1)}, {"after": "-1"}, {"after": "x"}):
        assert client.get(f"/runs/{run_id}/logs", params=bad).status_code == 400
    assert client.get("/runs/not-a-run!/logs").status_code == 404
    assert client.get(f"/runs/{uuid.uuid4()}/logs").status_code == 404


def test_logs_endpoint_enforces_environment_scope(client: TestClient, store: Store) -> None:
    aws = add_run(store, "etl", "aws-prod", utcnow(), logs=2, scope=("aws-prod",))
    gcp = add_run(store, "etl", "gcp-prod", utcnow(), logs=2, scope=("gcp-prod",))
    log_in(client, token(store, "viewer", ("aws-prod",)))
    assert len(client.get(f"/runs/{aws}/logs").json()["lines"]) == 2
    hidden = client.get(f"/runs/{gcp}/logs")
    assert hidden.status_code == 404 and "line" not in hidden.text
    assert shown_runs(client) == {aws}


def test_run_page_links_steps_to_their_live_log(client: TestClient, store: Store) -> None:
    run_id = add_run(store, "etl", "aws-prod", utcnow(), logs=1)
    log_in(client, token(store, "viewer"))
    page = client.get(f"/runs/{run_id}")
    assert f'href="/runs/{run_id}?step=work%231#step-detail"' in page.text
    detail = client.get(f"/runs/{run_id}", params={"step": "work#1"})
    assert 'id="step-detail"' in detail.text and 'data-live="1"' in detail.text
    assert 'id="step-log"' in detail.text


def test_run_page_names_the_run_a_cached_step_was_reused_from(
    client: TestClient, store: Store
) -> None:
    source = add_run(store, "etl", "aws-prod", utcnow())
    run_id = add_run(store, "etl", "aws-prod", utcnow())

    def reuse(session: Session) -> None:
        session.add(
            StepRunRow(
                id=str(uuid.uuid4()),
                flow_run_id=run_id,
                key="load#1",
                name="load",
                spec=StepSpec(name="load", module="flows", function="load"),
                inputs_json="{}",
                inputs_digest="0" * 64,
                state=StepState.CACHED,
                result_json="1",
                created_at=utcnow(),
                ended_at=utcnow(),
                cached_from_run_id=source,
                cached_from_step_key="load#1",
            )
        )

    store.run_sync(reuse)
    log_in(client, token(store, "viewer"))
    page = client.get(f"/runs/{run_id}").text
    assert f'reused from run <a href="/runs/{source}" class="mono">{source}</a>' in page
    assert "(step load#1)" in page
