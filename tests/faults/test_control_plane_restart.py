"""SIGKILL the control plane mid-run and start it again: every run finishes, nothing is lost,
nothing is recorded twice. Agents keep running their steps and replay their journals; the flow
runner's idempotent calls and its watch stream ride out the outage."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.faults.invariants import check_history, starts
from tests.integration.harness import Estate
from tests.support.deadlines import DEADLINE_S

FLOWS = Path(__file__).resolve().parent / "flows" / "fault_flows.py"


@pytest.mark.parametrize(
    ("kill_after_s", "down_for_s", "flow", "n"),
    [
        (0.3, 1.0, "many_quick_steps", 12),
        (1.2, 2.0, "many_quick_steps", 12),
        (2.5, 0.5, "many_quick_steps", 12),
        (2.0, 1.0, "quick_burst", 48),
    ],
    ids=[
        "while-dispatching",
        "while-results-in-flight",
        "late-short-outage",
        # Many results at once: reports of both agents are committed in groups (decision
        # 0017) when the control plane dies; acknowledged ones must all be there after.
        "during-a-burst-of-reports",
    ],
)
def test_sigkill_control_plane_mid_run(
    tmp_path: Path, kill_after_s: float, down_for_s: float, flow: str, n: int
) -> None:
    estate = Estate(tmp_path / "estate", heartbeat_s=0.5, lost_after_s=20.0).start()
    work = tmp_path
    try:
        estate.add_agent("aws-demo", {"cloud": "aws"})
        estate.add_agent("gcp-demo", {"cloud": "gcp"})
        runner = estate.run_background(FLOWS, flow, f"work={work}", f"n={n}")
        run_id = estate.latest_run_id(flow)
        time.sleep(kill_after_s)
        estate.kill_server()
        time.sleep(down_for_s)
        estate.restart_server()
        # The whole run, outages included: longer than one wait.
        assert runner.wait(timeout=1.5 * DEADLINE_S) == 0, estate.logs()
        detail = estate.client().get_run(run_id)
        assert detail.state == "COMPLETED"
        assert detail.result_json == str(sum(i * 10 for i in range(n)))
        check_history(detail)
        for i in range(n):
            # At-least-once execution: a step whose result was in flight may have run twice
            # only if its first attempt was lost; the control plane recorded one result.
            attempts = next(s for s in detail.steps if s.key == f"quick#{i + 1}").attempts
            assert len(starts(work, f"quick-{i}")) == len(attempts)
    except BaseException:
        print(estate.logs())
        raise
    finally:
        estate.stop()
