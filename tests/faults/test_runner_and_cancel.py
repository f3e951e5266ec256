"""The flow runner dies mid-flow (resume continues it without re-running completed steps), and
cancellation stops every step process on every agent."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.invariants import check_history, starts
from tests.integration.harness import Estate
from tests.support.deadlines import DEADLINE_S
from tests.support.polling import poll_until

FLOWS = Path(__file__).resolve().parent / "flows" / "fault_flows.py"


@pytest.fixture
def estate(tmp_path: Path) -> Iterator[Estate]:
    with Estate(tmp_path / "estate", heartbeat_s=0.5, runner_grace_s=1.0) as e:
        e.add_agent("aws-demo", {"cloud": "aws"})
        e.add_agent("gcp-demo", {"cloud": "gcp"})
        yield e


def test_killed_runner_crashes_the_run_and_resume_reuses_completed_steps(
    estate: Estate, tmp_path: Path
) -> None:
    work = tmp_path
    # A short runner lease so the crash is noticed quickly.
    runner = estate.cli_background(
        "run",
        f"{FLOWS}:resumable_chain",
        "-p",
        f"work={work}",
        "-p",
        "n=4",
        env={"MERIDIAN_RUNNER_LEASE_S": "2"},
    )
    run_id = estate.latest_run_id("resumable_chain")
    estate.wait_until(lambda: len(starts(work, "resumable-1")) == 1, "two steps to start")
    runner.send_signal(signal.SIGKILL)
    runner.wait(timeout=DEADLINE_S)
    assert estate.wait_for_state(run_id, {"CRASHED"}) == "CRASHED"

    resumed = estate.cli("runs", "resume", run_id)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr + estate.logs()
    detail = estate.client().get_run(run_id)
    assert detail.state == "COMPLETED"
    assert json.loads(detail.result_json) == [0, 1, 2, 3]
    # Step 0 completed before the crash: its stored result was reused, not run again.
    assert len(starts(work, "resumable-0")) == 1
    for i in range(4):
        assert len(starts(work, f"resumable-{i}")) == 1, i
    kinds = [e.kind for e in detail.events if not e.step_key]
    assert "run.crashed" in kinds and kinds[-1] == "run.completed"
    check_history(detail)


def test_retry_runs_the_whole_flow_again_as_a_new_run(estate: Estate, tmp_path: Path) -> None:
    work = tmp_path
    first = estate.cli("run", f"{FLOWS}:resumable_chain", "-p", f"work={work}", "-p", "n=2")
    assert first.returncode == 0, first.stderr
    run_id = estate.latest_run_id("resumable_chain")
    again = estate.cli("runs", "retry", run_id, "--json")
    assert again.returncode == 0, again.stderr
    new_id = estate.latest_run_id("resumable_chain")
    assert new_id != run_id
    assert estate.client().get_run(new_id).retry_of == run_id
    assert len(starts(work, "resumable-0")) == 2  # reused nothing


def test_cancel_stops_every_step_process_on_both_agents(estate: Estate, tmp_path: Path) -> None:
    work = tmp_path
    runner = estate.run_background(FLOWS, "runs_until_cancelled", f"work={work}")
    run_id = estate.latest_run_id("runs_until_cancelled")
    pid_file = work / "pids"
    estate.wait_until(
        lambda: pid_file.exists() and len(pid_file.read_text().split()) == 2,
        "both steps to start",
    )
    pids = [int(p) for p in pid_file.read_text().split()]
    cancelled = estate.cli(
        "runs", "cancel", run_id, "--reason", "test", "--wait", f"{DEADLINE_S:g}"
    )
    assert cancelled.returncode == 0, cancelled.stderr
    assert "CANCELLED" in cancelled.stdout
    detail = estate.client().get_run(run_id)
    assert detail.state == "CANCELLED"
    assert {s.state for s in detail.steps} == {"CANCELLED"}
    assert {a.state for s in detail.steps for a in s.attempts} == {"CANCELLED"}
    poll_until(
        lambda: not [p for p in pids if _alive(p)],
        interval=0.1,
        message=lambda: f"a step process survived the cancel: {[p for p in pids if _alive(p)]}",
    )
    runner.wait(timeout=DEADLINE_S)
    # The flow body caught StepCancelled and ran its compensation.
    assert (work / "compensated").read_text() == "yes"
    check_history(detail)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"
