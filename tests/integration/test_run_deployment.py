"""``meridian.run_deployment`` with real processes: a flow body runs a deployment as its child
(the child on a hosted runner, its result returned to the body, the parent's ``runs show``
listing it) and cancelling the parent cancels the deployment's run."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import FLOWS, Estate

FLOW_FILE = FLOWS / "deployment_child_flows.py"


@pytest.fixture
def estate(tmp_path: Path) -> Iterator[Estate]:
    with Estate(tmp_path / "estate", heartbeat_s=0.5) as e:
        e.add_agent("worker", {"role": "worker"}, capacity=2)
        e.add_agent("hosted", {"pool": "hosted"}, name="host-a", runner_slots=1)
        yield e


def _deploy(estate: Estate, flow: str, name: str) -> None:
    estate.cli(
        "deploy", f"{FLOW_FILE}:{flow}", "--name", name, "--runner-target", "pool=hosted",
        check=True,
    )  # fmt: skip


def test_a_flow_body_runs_a_deployment_as_its_child_and_gets_its_result(estate: Estate) -> None:
    _deploy(estate, "double", "double-it")
    done = estate.cli("run", f"{FLOW_FILE}:parent", "-p", "x=4")
    assert done.returncode == 0, done.stdout + done.stderr + estate.logs()
    run_id = estate.latest_run_id("parent")
    detail = estate.client().get_run(run_id)
    assert detail.state == "COMPLETED" and json.loads(detail.result_json) == 9
    (child,) = detail.children
    assert (child.flow_name, child.state, child.parent_run_id) == ("double", "COMPLETED", run_id)
    child_detail = estate.client().get_run(child.flow_run_id)
    assert child_detail.parent_key == "deployment:double-it#1"
    assert child_detail.trigger == "subflow" and child_detail.result_json == "8"
    assert any(e.kind == "run.runner_assigned" for e in child_detail.events)  # hosted
    shown = estate.cli("runs", "show", run_id, check=True).stdout
    assert child.flow_run_id in shown


def test_cancelling_the_parent_cancels_its_deployment_child(estate: Estate, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    _deploy(estate, "slow", "slow-one")
    follower = estate.cli_background("run", f"{FLOW_FILE}:parent_of_slow", "-p", f"work={work}")
    run_id = estate.latest_run_id("parent_of_slow")
    client = estate.client()

    def child_running() -> bool:
        children = client.get_run(run_id).children
        return bool(children) and children[0].state == "RUNNING"

    estate.wait_until(child_running, "the deployment's child run to start")
    child_id = client.get_run(run_id).children[0].flow_run_id
    estate.cli("runs", "cancel", run_id, check=True)
    assert estate.wait_for_state(child_id, {"CANCELLED", "COMPLETED", "FAILED"}) == "CANCELLED"
    assert estate.wait_for_state(run_id, {"CANCELLED", "COMPLETED", "FAILED"}) == "CANCELLED"
    (work / "go").touch()
    follower.wait(timeout=60)
