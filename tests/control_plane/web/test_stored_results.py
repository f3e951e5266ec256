"""The console shows a result that stayed at its site by its reference (size, environment and
store, serializer, digest), never as bytes, against a real store through Starlette's client."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.testclient import TestClient

from control_plane.store.db import Store
from control_plane.store.models import StepRunRow
from meridian.core.clock import utcnow
from meridian.core.resultref import ResultRef
from meridian.core.states import StepState
from tests.control_plane.web.test_guard import client, log_in, store, token
from tests.control_plane.web.test_runs_and_logs import add_run

__all__ = ["client", "store"]  # fixtures used here


def test_the_step_detail_shows_a_stored_result_by_its_reference(
    client: TestClient, store: Store
) -> None:
    ref = ResultRef(
        environment="aws-prod",
        store="s3-main",
        uri="s3://acme-results/runs/r/work/a/result",
        size=300 * 1024 * 1024,
        sha256="1a2b3c" + "0" * 58,
        serializer="parquet",
        sealed=True,
    )
    run_id = add_run(store, "etl", "aws-prod", utcnow())

    def complete(session: Session) -> None:
        step = session.scalars(select(StepRunRow).where(StepRunRow.flow_run_id == run_id)).one()
        step.state = StepState.COMPLETED
        step.result_ref_json, step.result_ref_sha256 = ref.to_json(), ref.sha256

    store.run_sync(complete)
    log_in(client, token(store, "viewer"))
    page = client.get(f"/runs/{run_id}", params={"step": "work#1"})
    assert page.status_code == 200, page.text
    assert (
        "stored result: 300.0 MiB in aws-prod/s3-main (parquet, sealed, sha256 1a2b3c000000…)"
        in page.text
    )
    assert ref.uri in page.text
