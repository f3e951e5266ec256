"""Agents die mid-step: the work moves elsewhere, or the restarted agent re-attaches."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.invariants import check_history, running_attempt, starts
from tests.integration.harness import Estate
from tests.support.deadlines import DEADLINE_S

FLOWS = Path(__file__).resolve().parent / "flows" / "fault_flows.py"


@pytest.fixture
def twin_agents(tmp_path: Path) -> Iterator[Estate]:
    """Two agents that both match cloud=aws, with fast heartbeats."""
    estate = Estate(tmp_path / "estate", lost_after_s=2.0, heartbeat_s=0.5).start()
    try:
        estate.add_agent("aws-a", {"cloud": "aws"}, name="aws-a")
        estate.add_agent("aws-b", {"cloud": "aws"}, name="aws-b")
        yield estate
    except BaseException:
        print(estate.logs())
        raise
    finally:
        estate.stop()


def wait_running(estate: Estate, run_id: str, key: str):  # type: ignore[no-untyped-def]
    """Until the attempt runs *and* its process exists (the agent recorded its handle): a kill
    before that finds nothing to re-attach to, and the attempt is rightly retried instead."""
    found: list = []

    def running() -> bool:
        found[:] = [running_attempt(estate.client().get_run(run_id), key)]
        return found[0] is not None and bool(found[0].resource_id)

    estate.wait_until(running, f"{key} to run")
    return found[0]


def test_sigkill_agent_mid_step_retries_on_another_agent(
    twin_agents: Estate, tmp_path: Path
) -> None:
    estate, work = twin_agents, tmp_path
    runner = estate.run_background(FLOWS, "one_slow_step", f"work={work}", "seconds=3")
    run_id = estate.latest_run_id("one_slow_step")
    attempt = wait_running(estate, run_id, "slow_on_aws#1")
    estate.kill_agent(attempt.agent_name)
    assert runner.wait(timeout=DEADLINE_S) == 0, estate.logs()
    detail = estate.client().get_run(run_id)
    assert detail.state == "COMPLETED"
    first, second = detail.steps[0].attempts
    assert first.state == "LOST" and first.error is not None
    assert first.error.error_class == "lost_agent"
    assert second.state == "SUCCEEDED" and second.agent_name != first.agent_name
    kinds = [e.kind for e in detail.events if e.step_key == "slow_on_aws#1"]
    assert kinds.index("attempt.lost") < kinds.index("attempt.succeeded")
    check_history(detail)
    # The killed agent's copy may still have run to its end: its result was never recorded.
    assert len(starts(work, "slow_on_aws")) == 2


def test_agent_restarted_within_lost_after_reattaches(tmp_path: Path) -> None:
    estate = Estate(tmp_path / "estate", lost_after_s=30.0, heartbeat_s=0.5).start()
    work = tmp_path
    try:
        estate.add_agent("aws-a", {"cloud": "aws"}, name="aws-a")
        runner = estate.run_background(FLOWS, "survives_agent_restart", f"work={work}", "seconds=4")
        run_id = estate.latest_run_id("survives_agent_restart")
        wait_running(estate, run_id, "reattachable#1")
        estate.kill_agent("aws-a")
        estate.start_agent("aws-a", "aws-a", {"cloud": "aws"})
        assert runner.wait(timeout=DEADLINE_S) == 0, estate.logs()
        detail = estate.client().get_run(run_id)
        assert detail.state == "COMPLETED"
        (only,) = detail.steps[0].attempts
        assert only.state == "SUCCEEDED"
        assert len(starts(work, "reattachable")) == 1  # re-attached, not run again
        check_history(detail)
    except BaseException:
        print(estate.logs())
        raise
    finally:
        estate.stop()
