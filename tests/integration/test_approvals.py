"""Human approvals end to end: a real control plane, an agent and `meridian run` processes;
operators decide with `meridian runs approve|reject`. Also: a viewer cannot decide, a crashed
paused run resumes with the decision taken meanwhile, and a control-plane restart keeps the
pending approval and its timer."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.invariants import starts
from tests.integration.harness import FLOWS, Estate
from tests.support.deadlines import DEADLINE_S

FLOW_FILE = FLOWS / "approval_flows.py"


@pytest.fixture(scope="module")
def estate(tmp_path_factory: pytest.TempPathFactory, estate_db: str | None) -> Iterator[Estate]:
    """Short heartbeats and runner grace, so a dead runner is noticed within seconds."""
    with Estate(
        tmp_path_factory.mktemp("approvals"), heartbeat_s=0.5, runner_grace_s=1.0, db_url=estate_db
    ) as e:
        e.add_agent("aws-demo", {"cloud": "aws"})
        yield e


def token_id(token: str) -> str:
    return token.removeprefix("mat_").split(".")[0]


def paused_run(estate: Estate, work: Path, *params: str, env: dict | None = None):  # type: ignore[no-untyped-def]
    """Start `meridian run` of gated_release; return (runner process, run id) once it waits."""
    args = ["run", f"{FLOW_FILE}:gated_release", "-p", f"work={work}"]
    for param in params:
        args += ["-p", param]
    earlier = {r.flow_run_id for r in estate.client().list_runs(flow_name="gated_release")}
    runner = estate.cli_background(*args, env=env)
    found: list[str] = []

    def created() -> bool:  # the module's estate holds the runs of earlier tests too
        runs = estate.client().list_runs(limit=1, flow_name="gated_release")
        found[:] = [r.flow_run_id for r in runs if r.flow_run_id not in earlier]
        return bool(found)

    estate.wait_until(created, "the run to be created")
    estate.wait_for_state(found[0], {"PAUSED"})
    return runner, found[0]


def test_an_operator_approves_from_the_cli_and_the_flow_completes(
    estate: Estate, tmp_path: Path
) -> None:
    runner, run_id = paused_run(estate, tmp_path)
    assert starts(tmp_path, "build") == ["started"] and not starts(tmp_path, "release")
    viewer = estate.new_api_token("viewer")
    denied = estate.cli("runs", "approve", run_id, "deploy#1", env={"MERIDIAN_TOKEN": viewer})
    assert denied.returncode == 1
    assert "needs the operator role" in denied.stderr
    operator = estate.new_api_token("operator")
    approved = estate.cli(
        "runs", "approve", run_id[:8], "deploy#1", "--reason", "plan reviewed",
        env={"MERIDIAN_TOKEN": operator},
    )  # fmt: skip
    assert approved.returncode == 0, approved.stderr
    assert f"approved by token:{token_id(operator)} (plan reviewed)" in approved.stdout
    assert runner.wait(timeout=DEADLINE_S) == 0, estate.logs()

    detail = estate.client().get_run(run_id)
    assert detail.state == "COMPLETED"
    assert json.loads(detail.result_json) == {
        "release": "released build-42",
        "approved_by": f"token:{token_id(operator)}",
        "reason": "plan reviewed",
    }
    assert len(starts(tmp_path, "release")) == 1
    # `meridian run` told the user how to decide.
    assert f"meridian runs approve {run_id} deploy#1" in estate.logs()
    shown = estate.cli("runs", "show", run_id, check=True).stdout
    assert "deploy#1" in shown and "plan reviewed" in shown
    audited = estate.cli("audit", "list", "--json", "--limit", "1000", check=True).stdout
    records = [r for r in json.loads(audited) if r["action"] == "run.approved"]
    assert [(r["actor"], r["subject"]) for r in records if r["subject"] == run_id] == [
        (f"token:{token_id(operator)}", run_id)
    ]


def test_a_rejection_fails_the_run_with_the_reason(estate: Estate, tmp_path: Path) -> None:
    runner, run_id = paused_run(estate, tmp_path)
    operator = estate.new_api_token("operator")
    rejected = estate.cli(
        "runs", "reject", run_id, "deploy#1", "--reason", "change freeze",
        env={"MERIDIAN_TOKEN": operator},
    )  # fmt: skip
    assert rejected.returncode == 0, rejected.stderr
    assert runner.wait(timeout=DEADLINE_S) == 1
    detail = estate.client().get_run(run_id)
    assert detail.state == "FAILED" and detail.error is not None
    assert detail.error.type == "meridian.core.errors.ApprovalRejected"
    assert "change freeze" in detail.error.message
    assert not starts(tmp_path, "release")


def test_a_crashed_paused_run_resumes_with_the_decision_taken_meanwhile(
    estate: Estate, tmp_path: Path
) -> None:
    runner, run_id = paused_run(estate, tmp_path, env={"MERIDIAN_RUNNER_LEASE_S": "2"})
    runner.send_signal(signal.SIGKILL)
    runner.wait(timeout=DEADLINE_S)
    estate.wait_for_state(run_id, {"CRASHED"})
    approved = estate.cli("runs", "approve", run_id, "deploy", "--reason", "go ahead")
    assert approved.returncode == 0, approved.stderr
    assert "the run is CRASHED" in approved.stdout
    resumed = estate.cli("runs", "resume", run_id)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    detail = estate.client().get_run(run_id)
    assert detail.state == "COMPLETED"
    assert json.loads(detail.result_json)["reason"] == "go ahead"
    # build completed before the crash and was reused; the approval was not asked again.
    assert len(starts(tmp_path, "build")) == 1 and len(starts(tmp_path, "release")) == 1
    assert [e.kind for e in detail.events].count("approval.requested") == 1
    assert [e.kind for e in detail.events if not e.step_key][-1] == "run.completed"


def test_a_control_plane_restart_keeps_the_approval_and_its_timer(
    estate: Estate, tmp_path: Path
) -> None:
    runner, run_id = paused_run(estate, tmp_path, "timeout=600")
    (before,) = estate.client().get_run(run_id).approvals
    assert before.state == "pending" and before.deadline is not None
    estate.kill_server()
    estate.restart_server()
    detail = estate.client().get_run(run_id)
    assert detail.state == "PAUSED"
    assert detail.approvals == (before,)  # same key, message, request time and deadline
    approved = estate.cli("runs", "approve", run_id, "deploy#1")
    assert approved.returncode == 0, approved.stderr
    assert runner.wait(timeout=DEADLINE_S) == 0, estate.logs()
    assert estate.client().get_run(run_id).state == "COMPLETED"
