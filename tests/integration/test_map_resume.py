"""A fan-out survives its flow runner: the runner is killed while one step of a ``map`` still
runs; ``runs resume`` submits the whole map again (one request) and gets every completed
step's stored result back instead of running it again."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import FLOWS, Estate
from tests.support.deadlines import DEADLINE_S

FLOW_FILE = FLOWS / "map_flows.py"
N = 30


@pytest.fixture
def estate(tmp_path: Path) -> Iterator[Estate]:
    with Estate(tmp_path / "estate", heartbeat_s=0.5, runner_grace_s=1.0) as e:
        e.add_agent("aws-demo", {"cloud": "aws"}, capacity=4)
        yield e


def starts(work: Path, i: int) -> list[str]:
    path = work / f"square-{i}.starts"
    return path.read_text().splitlines() if path.exists() else []


def test_a_resumed_map_reuses_its_completed_steps(estate: Estate, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    runner = estate.cli_background(
        "run", f"{FLOW_FILE}:resumable_map", "-p", f"work={work}", "-p", f"n={N}",
        env={"MERIDIAN_RUNNER_LEASE_S": "2"},  # the crash is noticed quickly
    )  # fmt: skip
    run_id = estate.latest_run_id("resumable_map")
    client = estate.client()

    def all_but_the_first_completed() -> bool:
        steps = client.get_run(run_id).steps
        return sum(s.state == "COMPLETED" for s in steps) == N - 1

    estate.wait_until(all_but_the_first_completed, f"{N - 1} of {N} steps to complete")
    runner.send_signal(signal.SIGKILL)
    runner.wait(timeout=DEADLINE_S)
    assert estate.wait_for_state(run_id, {"CRASHED"}) == "CRASHED"

    resumed = estate.cli_background("runs", "resume", run_id)
    # The resumed body waits for square#1, still running on the agent, then the run ends.
    estate.wait_until(lambda: client.get_run(run_id).state == "RUNNING", "the run to resume")
    (work / "go").touch()
    assert resumed.wait(timeout=DEADLINE_S) == 0, estate.logs()
    detail = client.get_run(run_id)
    assert detail.state == "COMPLETED"
    assert json.loads(detail.result_json) == [i * i for i in range(N)]
    for i in range(N):
        assert len(starts(work, i)) == 1, i  # no step ran twice
    assert sorted(s.key for s in detail.steps) == sorted(f"square#{i}" for i in range(1, N + 1))
    assert all(len(s.attempts) == 1 for s in detail.steps)
