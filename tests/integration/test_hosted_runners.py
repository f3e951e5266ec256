"""Hosted flow runners with real processes (decision 0018): a run's body runs on an agent
offering runner slots; when that machine dies (the agent AND its runner process are
SIGKILLed) the run completes on a second matching agent by replay, without re-running its
completed steps; with on_runner_lost=fail it ends FAILED saying why."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import FLOWS, Estate
from tests.support.deadlines import DEADLINE_S

FLOW_FILE = FLOWS / "hosted_flows.py"


@pytest.fixture
def estate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Estate]:
    # Inherited by the agents' runner processes: a lost runner is noticed within seconds.
    monkeypatch.setenv("MERIDIAN_RUNNER_LEASE_S", "2")
    with Estate(tmp_path / "estate", heartbeat_s=0.5, runner_grace_s=1.0) as e:
        e.add_agent("worker", {"role": "worker"}, capacity=4)
        e.add_agent("hosted", {"pool": "hosted"}, name="host-a", runner_slots=1)
        yield e


def _starts(work: Path, name: str) -> list[str]:
    path = work / name
    return path.read_text().splitlines() if path.exists() else []


def _kill_machine(estate: Estate, name: str) -> None:
    """SIGKILL the agent and every runner process it started, as a dead machine would."""
    state = estate.root / "agents" / name / "flowrunners.json"
    runners = json.loads(state.read_text())["runners"] if state.exists() else []
    estate.kill_agent(name)
    for runner in runners:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(runner["pid"], signal.SIGKILL)
    assert runners, "the agent held no runner"


def _start_hosted_run(estate: Estate, work: Path) -> str:
    follower = estate.cli_background(
        "run", "--remote", f"{FLOW_FILE}:hosted_stages", "--runner-target", "pool=hosted",
        "-p", f"work={work}",
    )  # fmt: skip
    run_id = estate.latest_run_id("hosted_stages")
    estate._follower = follower  # type: ignore[attr-defined]
    return run_id


def _wait_mid_flow(estate: Estate, run_id: str) -> None:
    client = estate.client()

    def mid_flow() -> bool:
        steps = {s.key: s.state for s in client.get_run(run_id).steps}
        return (
            steps.get("stage#1") == "COMPLETED"
            and steps.get("stage#2") == "COMPLETED"
            and (steps.get("stage#3") == "RUNNING")
        )

    estate.wait_until(mid_flow, "two steps to complete and the third to run")


def test_a_hosted_run_survives_the_loss_of_its_runners_machine(
    estate: Estate, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    run_id = _start_hosted_run(estate, work)
    _wait_mid_flow(estate, run_id)
    client = estate.client()
    assert client.get_run(run_id).state == "RUNNING"

    _kill_machine(estate, "host-a")
    estate.add_agent("hosted", {"pool": "hosted"}, name="host-b", runner_slots=1)
    (work / "go").touch()
    assert estate.wait_for_state(run_id, {"COMPLETED", "FAILED"}) == "COMPLETED", estate.logs()

    detail = client.get_run(run_id)
    assert json.loads(detail.result_json) == 100
    # The body ran twice (once per runner); each completed step ran exactly once.
    assert len(_starts(work, "body.starts")) == 2
    for step in detail.steps:
        assert step.state == "COMPLETED"
        assert len(step.attempts) == 1, (step.key, step.attempts)
    for i in range(1, 5):
        assert len(_starts(work, f"stage-{i}.starts")) == 1
    kinds = [e.kind for e in detail.events]
    assert kinds.count("run.runner_assigned") == 2
    lost = [e for e in detail.events if e.kind == "run.runner_lost"]
    assert len(lost) == 1 and "host-a" in lost[0].message and "resuming" in lost[0].message
    follower = estate._follower  # type: ignore[attr-defined]
    assert follower.wait(timeout=DEADLINE_S) == 0, estate.logs()


def test_resume_and_retry_of_a_failed_hosted_run_go_back_to_a_hosted_runner(
    estate: Estate, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    failed = estate.cli(
        "run", "--remote", f"{FLOW_FILE}:fix_then_resume", "--runner-target", "pool=hosted",
        "-p", f"work={work}",
    )  # fmt: skip
    assert failed.returncode == 1, failed.stdout + failed.stderr
    run_id = estate.latest_run_id("fix_then_resume")
    client = estate.client()
    assert client.get_run(run_id).state == "FAILED"

    (work / "fixed").touch()
    resumed = estate.cli("runs", "resume", run_id)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr + estate.logs()
    assert "COMPLETED" in resumed.stdout
    detail = client.get_run(run_id)
    assert detail.state == "COMPLETED" and json.loads(detail.result_json) == "fixed"
    # Both bodies ran on a hosted runner (never in the CLI's process); stage#1 ran once.
    assert _starts(work, "body.starts") == [run_id, run_id]
    assert len(_starts(work, "stage-1.starts")) == 1
    assert [e.kind for e in detail.events].count("run.runner_assigned") == 2

    retried = estate.cli("runs", "retry", run_id)
    assert retried.returncode == 0, retried.stdout + retried.stderr + estate.logs()
    new_id = estate.latest_run_id("fix_then_resume")
    assert new_id != run_id and client.get_run(new_id).state == "COMPLETED"
    assert _starts(work, "body.starts")[-1] == new_id  # hosted too
    assert len(_starts(work, "stage-1.starts")) == 2  # a retry reuses nothing


@pytest.mark.slow  # a long scenario; the fail policy's decision is also a use-case test
def test_with_on_runner_lost_fail_the_run_fails_with_the_reason(
    estate: Estate, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    estate.cli(
        "deploy", f"{FLOW_FILE}:hosted_stages", "--name", "stages-fail",
        "--runner-target", "pool=hosted", "--on-runner-lost", "fail", "-p", f"work={work}",
        check=True,
    )  # fmt: skip
    shown = estate.cli("deployments", "show", "stages-fail", check=True).stdout
    assert "on lost: fail" in shown  # the policy the version copies onto its runs
    started = estate.cli("deployments", "run", "stages-fail", check=True).stdout
    match = re.search(r"Run (\S+) of stages-fail", started)
    assert match, started
    run_id = match.group(1)
    _wait_mid_flow(estate, run_id)

    _kill_machine(estate, "host-a")
    assert estate.wait_for_state(run_id, {"COMPLETED", "FAILED"}) == "FAILED", estate.logs()
    detail = estate.client().get_run(run_id)
    assert detail.error is not None and detail.error.error_class == "lost_agent"
    assert "the flow runner on agent host-a stopped renewing its lease" in detail.error.message
    assert "on_runner_lost=fail" in detail.error.message
    (work / "go").touch()


def test_a_hosted_body_receives_its_deployment_parameters_as_their_declared_types(
    estate: Estate,
) -> None:
    pytest.importorskip("pydantic")
    probe = FLOWS / "param_type_flows.py"
    estate.cli(
        "deploy", f"{probe}:probe", "--name", "probe-dep", "--runner-target", "pool=hosted",
        "-p", "n=1", "-p", "p=/tmp", "-p", "color=RED",  # a stored default, as JSON
        check=True,
    )  # fmt: skip
    given = ["-p", "when=2026-03-01T10:00:00Z", "-p", "day=2026-03-01", "-p", "color=GREEN"]
    good = estate.cli(
        "deployments", "run", "probe-dep", *given, "-p", 'cfg={"name": "a", "size": 3}',
        "-p", 'colors=["RED"]', "--wait",
    )  # fmt: skip
    assert good.returncode == 0, good.stdout + good.stderr + estate.logs()
    client = estate.client()
    detail = client.get_run(estate.latest_run_id("probe"))
    assert json.loads(detail.result_json) == {
        "n": "int", "when": "datetime", "day": "date", "color": "Color", "p": "PosixPath",
        "cfg": "Cfg", "colors": ["Color"], "maybe": "NoneType", "is_member": True, "size": 3,
    }  # fmt: skip
    assert json.loads(detail.parameters_json)["day"] == "2026-03-01"  # the record stays JSON

    # The control plane checks a model's required fields; the model itself checks the rest
    # when the body starts, failing the run with pydantic's errors under the parameter's name.
    bad = estate.cli(
        "deployments", "run", "probe-dep", *given, "-p", 'cfg={"name": "a", "size": "notint"}',
        "--wait",
    )  # fmt: skip
    assert bad.returncode != 0, bad.stdout + bad.stderr
    failed = client.get_run(estate.latest_run_id("probe"))
    assert failed.state == "FAILED" and failed.error is not None
    assert failed.error.message.startswith("parameter 'cfg': not a valid Cfg: size: ")
