"""End to end: meridian.context() in a flow body and in a retried step, and get_logger()
records filtered by level in ``runs logs`` (a real control plane and agent, loopback TLS)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.integration.harness import FLOWS, Estate

FLOW_FILE = FLOWS / "context_flows.py"


@pytest.fixture(scope="module")
def estate(tmp_path_factory: pytest.TempPathFactory, estate_db: str | None) -> Iterator[Estate]:
    with Estate(tmp_path_factory.mktemp("estate"), db_url=estate_db) as e:
        e.add_agent("onprem-demo", {"site": "dc1"})
        yield e


@pytest.fixture(scope="module")
def ran(estate: Estate, tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("work")
    result = estate.cli("run", f"{FLOW_FILE}:context_flow", "-p", f"work={work}")
    assert result.returncode == 0, result.stdout + result.stderr
    run_id = estate.client().list_runs(limit=1, flow_name="context_flow")[0].flow_run_id
    shown = estate.cli("runs", "show", run_id, "--json", check=True)
    detail: dict = json.loads(shown.stdout)
    return detail


def test_the_flow_body_and_the_retried_step_see_their_context(ran: dict) -> None:
    run_id = ran["flow_run_id"]
    flow_ctx, step_ctx = ran["result"]["flow"], ran["result"]["step"]
    assert flow_ctx["run_id"] == run_id and flow_ctx["flow_name"] == "context_flow"
    assert flow_ctx["step_key"] is None and flow_ctx["attempt_number"] is None
    assert flow_ctx["environment"] is None and flow_ctx["deployment"] is None  # a local body
    [step_run] = [s for s in ran["steps"] if s["key"] == "where_am_i#1"]
    first, second = step_run["attempts"]
    assert first["state"] == "FAILED" and second["state"] == "SUCCEEDED"
    assert step_ctx["run_id"] == run_id
    assert step_ctx["step_key"] == "where_am_i#1" and step_ctx["step_name"] == "where_am_i"
    assert step_ctx["attempt_number"] == 2
    assert step_ctx["attempt_id"] == second["attempt_id"]
    assert step_ctx["environment"] == "onprem-demo" and step_ctx["agent_id"]
    assert step_ctx["deployment"] is None
    assert step_ctx["subprocess_saw"] == [run_id, "where_am_i#1", "2"]


def shown_texts(estate: Estate, run_id: str, level: str) -> list[str]:
    out = estate.cli("runs", "logs", run_id, "--level", level, check=True).stdout
    return [line.split(" | ", 1)[1] for line in out.splitlines()]


def test_runs_logs_filters_get_logger_records_by_level(estate: Estate, ran: dict) -> None:
    run_id = ran["flow_run_id"]
    assert shown_texts(estate, run_id, "warning") == [
        "ctx: warning record of attempt 1",
        "ctx: error record of attempt 1",
        "ctx: warning record of attempt 2",
        "ctx: error record of attempt 2",
    ]
    assert shown_texts(estate, run_id, "error") == [
        "ctx: error record of attempt 1",
        "ctx: error record of attempt 2",
    ]
    everything = shown_texts(estate, run_id, "debug")
    for attempt in (1, 2):
        for what in ("debug", "info", "warning", "error"):
            assert f"ctx: {what} record of attempt {attempt}" in everything
        assert f"plain print of attempt {attempt}" in everything  # stdout: INFO, as before
    assert "ctx: debug record of attempt 1" not in shown_texts(estate, run_id, "info")
    out = estate.cli("runs", "logs", run_id, "--level", "warning", check=True).stdout
    assert all(" warning | " in line or " error  | " in line for line in out.splitlines()), out
