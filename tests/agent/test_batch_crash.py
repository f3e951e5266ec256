"""A real agent process SIGKILLed at every point of a journal batch loses and duplicates nothing.

The agent (``python -m tests.agent.crashpoint``: the production CLI with the journal's batch
write wrapped) kills itself with SIGKILL just before the batch holding a chosen report commits,
just after it committed (durable, not yet sent), or when the control plane's ack for it is about
to be applied (sent and applied, still in the journal). A fresh agent on the same data dir then
takes over. The control plane applies each report seq at most once (``agents.last_applied_seq``,
moved in the same transaction as the change), so a replayed report is never applied twice.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from subprocess import Popen

import pytest

from tests.agent.crashpoint import POINTS
from tests.faults.invariants import check_history, starts
from tests.integration.harness import Estate, child_env
from tests.support.deadlines import DEADLINE_S

FLOWS = Path(__file__).resolve().parents[1] / "faults" / "flows" / "fault_flows.py"
AGENT = "aws-a"


class CrashingEstate(Estate):
    """Starts its first agent process through the crash point, later ones normally."""

    crash: tuple[str, str] | None = None

    def _spawn(self, name: str, args: Sequence[str]) -> Popen[bytes]:
        if not name.startswith("agent-") or self.crash is None:
            return super()._spawn(name, args)
        kind, point = self.crash
        self.crash = None
        log = self.root / f"{name}.log"
        if log not in self._logs:
            self._logs.append(log)
        with open(log, "ab") as out:
            return Popen(
                [sys.executable, "-m", "tests.agent.crashpoint", kind, point, *args],
                stdout=out,
                stderr=out,
                env=child_env(),
                start_new_session=True,
                cwd=Path(__file__).resolve().parents[2],
            )


# "running": the RUNNING proposal (nothing started yet); "handle": the batch holding the handle
# and its report (the step's process runs); "finished": the outcome with the handle's removal.
CASES = [
    ("running", "before_commit"),
    ("handle", "after_commit"),
    *[("finished", point) for point in POINTS],
]


@pytest.mark.parametrize(("kind", "point"), CASES, ids=[f"{k}-{p}" for k, p in CASES])
def test_sigkill_at_every_point_of_a_batch(tmp_path: Path, kind: str, point: str) -> None:
    estate = CrashingEstate(tmp_path / "estate", lost_after_s=30.0, heartbeat_s=0.5)
    estate.start()
    work = tmp_path
    try:
        estate.crash = (kind, point)
        estate.add_agent("aws-a", {"cloud": "aws"}, name=AGENT)
        runner = estate.run_background(FLOWS, "survives_agent_restart", f"work={work}", "seconds=1")
        doomed = estate.agents.pop(AGENT)
        assert doomed.wait(timeout=DEADLINE_S) == -9, estate.logs()  # it killed itself
        estate.start_agent(AGENT, "aws-a", {"cloud": "aws"})
        assert runner.wait(timeout=DEADLINE_S) == 0, estate.logs()
        detail = estate.client().get_run(run_id := estate.latest_run_id("survives_agent_restart"))
        assert detail.state == "COMPLETED", (run_id, estate.logs())
        check_history(detail)  # no attempt ended twice, no result recorded twice
        (step,) = detail.steps
        succeeded = [a for a in step.attempts if a.state == "SUCCEEDED"]
        assert len(succeeded) == 1
        if kind == "running":
            # Nothing had started: the attempt is assigned again (or retried), code runs once.
            assert len(starts(work, "reattachable")) == 1
        else:
            # The step's process ran before the kill: the restarted agent re-attached or
            # replayed its outcome; the code never ran a second time.
            assert len(step.attempts) == 1, step.attempts
            assert len(starts(work, "reattachable")) == 1
        applied = [e for e in detail.events if e.kind == "attempt.succeeded"]
        assert len(applied) == 1
    except BaseException:
        print(estate.logs())
        raise
    finally:
        estate.stop()


def test_a_dead_agents_accepted_running_proposal_is_not_claimed_by_its_successor(
    tmp_path: Path,
) -> None:
    """The agent dies once the control plane accepted its RUNNING proposal (applied and acked)
    but before it deleted the report: the journal still holds the proposal, not an outcome.
    The restarted agent must not claim that attempt in its Hello (it has no runner and no
    outcome for it) — otherwise the control plane keeps it RUNNING for ever, renewed by every
    heartbeat. Unclaimed, it is found lost and retried, and the run completes."""
    estate = CrashingEstate(tmp_path / "estate", lost_after_s=30.0, heartbeat_s=0.5)
    estate.start()
    try:
        estate.crash = ("running", "before_ack")
        estate.add_agent("aws-a", {"cloud": "aws"}, name=AGENT)
        runner = estate.run_background(
            FLOWS, "survives_agent_restart", f"work={tmp_path}", "seconds=1"
        )
        doomed = estate.agents.pop(AGENT)
        assert doomed.wait(timeout=DEADLINE_S) == -9, estate.logs()
        estate.start_agent(AGENT, "aws-a", {"cloud": "aws"})
        assert runner.wait(timeout=DEADLINE_S) == 0, estate.logs()
        detail = estate.client().get_run(estate.latest_run_id("survives_agent_restart"))
        assert detail.state == "COMPLETED"
        check_history(detail)
        (step,) = detail.steps
        assert [a.state for a in step.attempts if a.state == "SUCCEEDED"] == ["SUCCEEDED"]
        assert len(starts(tmp_path, "reattachable")) >= 1
    except BaseException:
        print(estate.logs())
        raise
    finally:
        estate.stop()
