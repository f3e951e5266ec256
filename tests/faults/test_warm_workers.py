"""Warm step workers through a real control plane and real agent processes.

The process a step ran in is visible from outside: an attempt's resource id is ``pid:<pid>``
(for a warm attempt, its worker's pid), and the steps here return their own pid.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from meridian import models
from tests.faults.invariants import check_history, running_attempt, starts
from tests.integration.harness import Estate
from tests.support.deadlines import DEADLINE_S

FLOWS = textwrap.dedent(
    '''
    """Flows of tests/faults/test_warm_workers.py."""

    from __future__ import annotations

    import os
    import time
    from pathlib import Path

    from meridian import StepFailed, flow, step


    @step(target="site=warm")
    def whoami(i: int) -> int:
        return os.getpid()


    @step(target="site=warm", isolation="process")
    def fresh(i: int) -> int:
        return os.getpid()


    @step(target="site=warm")
    def crash(code: int) -> int:
        os._exit(code)


    @step(target="site=warm", lost_after=60.0)
    def in_flight(work: str, seconds: float) -> int:
        with open(Path(work, "in_flight.starts"), "a") as fh:
            fh.write(f"{os.getpid()}\\n")
        time.sleep(seconds)
        return os.getpid()


    @flow
    def sequence(n: int = 3) -> list[int]:
        return [whoami(i) for i in range(n)] + [fresh(0)]


    @flow
    def crash_then_go_on() -> str:
        before = whoami(0)
        try:
            crash(3)
        except StepFailed as exc:
            failure = str(exc)
        after = whoami(1)
        return f"{before} {after} {failure}"


    @flow
    def step_in_flight(work: str, seconds: float = 3.0) -> int:
        return in_flight(work, seconds)
    '''
)


@pytest.fixture
def estate(tmp_path: Path) -> Iterator[Estate]:
    estate = Estate(tmp_path / "estate", lost_after_s=30.0, heartbeat_s=0.5).start()
    try:
        (tmp_path / "flows").mkdir()  # the flow's code bundle is its directory
        (tmp_path / "flows" / "warm_flows.py").write_text(FLOWS)
        estate.add_agent("warm", {"site": "warm"}, name="warm")
        yield estate
    except BaseException:
        print(estate.logs())
        raise
    finally:
        estate.stop()


def _flows(estate: Estate) -> Path:
    return estate.root.parent / "flows" / "warm_flows.py"


def _finish(estate: Estate, flow: str, *params: str) -> models.RunDetail:
    runner = estate.run_background(_flows(estate), flow, *params)
    assert runner.wait(timeout=DEADLINE_S) == 0, estate.logs()
    detail = estate.client().get_run(estate.latest_run_id(flow))
    check_history(detail)
    return detail


def _attempts(detail: models.RunDetail, name: str) -> list[models.AttemptDetail]:
    return [a for s in detail.steps if s.key.startswith(name + "#") for a in s.attempts]


def _pid(attempt: models.AttemptDetail) -> int:
    kind, pid = attempt.resource_id.split(":")
    assert kind == "pid", attempt.resource_id
    return int(pid)


def test_steps_of_a_flow_reuse_one_warm_worker(estate: Estate) -> None:
    detail = _finish(estate, "sequence", "n=3")
    assert detail.state == "COMPLETED"
    warm = _attempts(detail, "whoami")
    assert [a.state for a in warm] == ["SUCCEEDED"] * 3
    # One agent, one step at a time: the same worker ran all three, one after another, and
    # each step itself ran in that process.
    (worker,) = {_pid(a) for a in warm}
    (fresh,) = _attempts(detail, "fresh")
    assert json.loads(detail.result_json) == [worker, worker, worker, _pid(fresh)]
    assert _pid(fresh) != worker  # isolation="process": an interpreter of its own


def test_a_crashing_step_fails_only_its_attempt(estate: Estate) -> None:
    detail = _finish(estate, "crash_then_go_on")
    assert detail.state == "COMPLETED"
    (crashed,) = _attempts(detail, "crash")
    assert crashed.state == "FAILED" and crashed.error is not None
    assert crashed.error.error_class == "infrastructure"
    assert "warm worker" in crashed.error.message and "code 3" in crashed.error.message
    before, after = (_attempts(detail, "whoami")[i] for i in (0, 1))
    assert before.state == after.state == "SUCCEEDED"
    # The crashed worker was replaced: the step after it ran in another worker.
    assert _pid(after) != _pid(crashed)


def test_restarted_agent_collects_a_step_in_flight_in_a_warm_worker(
    estate: Estate, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    runner = estate.run_background(_flows(estate), "step_in_flight", f"work={work}", "seconds=3")
    run_id = estate.latest_run_id("step_in_flight")
    found: list[models.AttemptDetail | None] = [None]

    def recorded() -> bool:
        found[0] = running_attempt(estate.client().get_run(run_id), "in_flight#1")
        return found[0] is not None and bool(found[0].resource_id)

    estate.wait_until(recorded, "the step to run in a warm worker")
    assert found[0] is not None
    estate.kill_agent("warm")
    estate.start_agent("warm", "warm", {"site": "warm"})
    assert runner.wait(timeout=DEADLINE_S) == 0, estate.logs()
    detail = estate.client().get_run(run_id)
    check_history(detail)
    assert detail.state == "COMPLETED"
    (only,) = _attempts(detail, "in_flight")
    assert only.state == "SUCCEEDED"
    assert len(starts(work, "in_flight")) == 1  # re-attached, not run again
    assert detail.result_json == str(_pid(only))  # the old agent's worker finished it
