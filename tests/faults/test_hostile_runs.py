"""A user's plausible mistakes and impatience, against a real estate (control plane, agents and
`meridian run` as processes): a target no agent matches is explained within one scheduler pass,
Ctrl-C and SIGTERM cancel the run and say how to resume it, a second Ctrl-C leaves at once,
`runs cancel --wait` fails when an agent cannot confirm, and `agents list` never calls an agent
whose heartbeats stopped "connected"."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import Estate, child_env, meridian_cmd
from tests.support.deadlines import DEADLINE_S
from tests.support.polling import poll_until

HEARTBEAT_S = 0.5
# Long enough that a `runs cancel --wait 1` on a loaded machine ends before a stopped agent's
# lease lapses (the cancel must still be unconfirmed then), short enough to see it lost.
LOST_AFTER_S = 15.0

FLOWS = """
import os
import time
from pathlib import Path

from meridian import flow, step


@step(target="cloud=AWS", schedule_timeout=600)
def typo() -> int:
    return 1


@step(target="cloud=aws", provider="slurm", schedule_timeout=600)
def no_such_provider() -> int:
    return 2


@step(target="site=hpc", schedule_timeout=600)
def only_draining() -> int:
    return 3


@flow
def nowhere() -> int:
    futures = [typo.submit(), no_such_provider.submit(), only_draining.submit()]
    return sum(f.result() for f in futures)


@step(target="cloud=aws")
def sleeper(work: str, i: int) -> int:
    marker = Path(work) / f"ran-{i}"
    if marker.exists():  # a resumed run: finish at once
        return i
    marker.write_text("")
    with open(Path(work) / "pids", "a") as f:
        f.write(f"{os.getpid()}\\n")
    time.sleep(300)
    return i


@flow
def long_steps(work: str, n: int = 2) -> int:
    return sum(f.result() for f in [sleeper.submit(work, i) for i in range(n)])
"""


@pytest.fixture(scope="module")
def estate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Estate]:
    root = tmp_path_factory.mktemp("hostile")
    with Estate(root / "estate", heartbeat_s=HEARTBEAT_S, lost_after_s=LOST_AFTER_S) as e:
        e.add_agent("aws-demo", {"cloud": "aws"})
        e.add_agent("hpc", {"site": "hpc"}, capacity=1)
        e.cli("agents", "drain", "hpc-agent", "--reason", "maintenance", check=True)
        yield e


@pytest.fixture(scope="module")
def flows(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("project") / "hostile_flows.py"
    path.write_text(FLOWS)
    return path


class Runner:
    """`meridian run` as a subprocess of its own, its output in a file we can read."""

    def __init__(self, estate: Estate, flows: Path, flow: str, log: Path, *params: str) -> None:
        self.log = log
        args = ["run", f"{flows}:{flow}"]
        for p in params:
            args += ["-p", p]
        env = child_env(
            {
                "MERIDIAN_CONTROL_PLANE": estate.address,
                "MERIDIAN_CA_FILE": str(estate.ca_file),
                "MERIDIAN_TOKEN": estate.token,
            }
        )
        self.estate, self.flow = estate, flow
        self._before = self._runs()
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                meridian_cmd(*args), stdout=out, stderr=subprocess.STDOUT, env=env
            )

    def _runs(self) -> set[str]:
        return {
            r.flow_run_id for r in self.estate.client().list_runs(limit=100, flow_name=self.flow)
        }

    def run_id(self) -> str:
        """The id of the run this runner created (not an earlier test's)."""
        found: list[str] = []

        def created() -> bool:
            found[:] = sorted(self._runs() - self._before)
            return bool(found)

        self.estate.wait_until(created, f"a new run of {self.flow}")
        return found[0]

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self) -> int:
        return self.proc.wait(timeout=DEADLINE_S)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=DEADLINE_S)


def _pids(work: Path, n: int) -> list[int]:
    pid_file = work / "pids"
    poll_until(
        lambda: pid_file.exists() and len(pid_file.read_text().split()) >= n,
        interval=0.1,
        message=lambda: f"{n} step processes to start",
    )
    return [int(p) for p in pid_file.read_text().split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def _all_gone(pids: list[int]) -> None:
    poll_until(
        lambda: not [p for p in pids if _alive(p)],
        interval=0.1,
        message=lambda: f"step processes survived: {[p for p in pids if _alive(p)]}",
    )


def test_unmatched_targets_are_explained_within_one_pass(
    estate: Estate, flows: Path, tmp_path: Path
) -> None:
    runner = Runner(estate, flows, "nowhere", tmp_path / "run.log")
    try:
        run_id = runner.run_id()
        # The schedule timeout is 600 s: a bounded wait far below it proves the reasons come
        # from the scheduler pass, not from the timeout.
        wait = min(DEADLINE_S, 60.0)

        def reasons() -> dict[str, str]:
            detail = estate.client().get_run(run_id)
            return {e.step_key: e.message for e in detail.events if e.kind == "attempt.waiting"}

        poll_until(lambda: len(reasons()) == 3, timeout=wait, interval=0.2,
                   message=lambda: f"three waiting reasons, got {reasons()}")  # fmt: skip
        found = reasons()
        assert "did you mean cloud=aws?" in found["typo#1"]
        assert 'no agent offers provider "slurm"' in found["no_such_provider#1"]
        assert "draining" in found["only_draining#1"] and "hpc-agent" in found["only_draining#1"]

        shown = estate.cli("runs", "show", run_id, check=True).stdout
        assert "Waiting to start:" in shown and "did you mean cloud=aws?" in shown
        as_json = json.loads(estate.cli("runs", "show", run_id, "--json", check=True).stdout)
        assert {w["step_key"] for w in as_json["waiting"]} == set(found)
        poll_until(lambda: runner.output().count("attempt.waiting") >= 3, timeout=wait,
                   message=lambda: f"the reasons' progress lines:{runner.output()}")  # fmt: skip
        assert "did you mean cloud=aws?" in runner.output()

        # Still waiting (no event per pass): one event per attempt and reason.
        assert len([e for e in estate.client().get_run(run_id).events
                    if e.kind == "attempt.waiting"]) == 3  # fmt: skip
        cancelled = estate.cli("runs", "cancel", run_id, "--wait", f"{DEADLINE_S:g}")
        assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
        assert runner.wait() != 0
    finally:
        runner.stop()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_cancels_the_run_and_says_how_to_resume(
    estate: Estate, flows: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    runner = Runner(estate, flows, "long_steps", tmp_path / "run.log", f"work={tmp_path}")
    try:
        run_id = runner.run_id()
        pids = _pids(tmp_path, 2)
        runner.proc.send_signal(sig)
        assert runner.wait() == 128 + sig.value, runner.output()
        out = runner.output()
        assert f"run {run_id} is CANCELLED" in out, out
        assert f"meridian runs resume {run_id}" in out
        assert "KeyboardInterrupt" not in out
        detail = estate.client().get_run(run_id)
        assert detail.state == "CANCELLED"
        assert {s.state for s in detail.steps} == {"CANCELLED"}
        _all_gone(pids)
    finally:
        runner.stop()


def test_a_second_interrupt_exits_at_once_and_the_run_resumes(
    estate: Estate, flows: Path, tmp_path: Path
) -> None:
    runner = Runner(estate, flows, "long_steps", tmp_path / "run.log", f"work={tmp_path}")
    agent = estate.agents["aws-demo-agent"]
    try:
        run_id = runner.run_id()
        pids = _pids(tmp_path, 2)
        agent.send_signal(signal.SIGSTOP)  # so the cancel cannot be confirmed yet
        runner.proc.send_signal(signal.SIGINT)
        estate.wait_for_state(run_id, {"CANCELLING"})
        poll_until(lambda: "interrupt again" in runner.output(), interval=0.1,
                   message=lambda: runner.output())  # fmt: skip
        runner.proc.send_signal(signal.SIGINT)
        assert runner.wait() == 130, runner.output()
        assert "Interrupted again" in runner.output()
        assert f"meridian runs resume {run_id}" in runner.output()
    finally:
        agent.send_signal(signal.SIGCONT)
        runner.stop()
    assert estate.wait_for_state(run_id, {"CANCELLED", "CRASHED"}) in {"CANCELLED", "CRASHED"}
    _all_gone(pids)
    resumed = estate.cli("runs", "resume", run_id)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr + estate.logs()
    assert estate.client().get_run(run_id).state == "COMPLETED"


def test_cancel_wait_fails_while_an_agent_cannot_confirm_and_agents_list_says_stale(
    estate: Estate, flows: Path, tmp_path: Path
) -> None:
    runner = Runner(estate, flows, "long_steps", tmp_path / "run.log", f"work={tmp_path}", "n=1")
    agent = estate.agents["aws-demo-agent"]
    try:
        run_id = runner.run_id()
        pids = _pids(tmp_path, 1)
        agent.send_signal(signal.SIGSTOP)
        cancelled = estate.cli("runs", "cancel", run_id, "--wait", "1")
        assert cancelled.returncode == 1, cancelled.stdout + cancelled.stderr
        assert "still CANCELLING" in cancelled.stdout
        assert "sleeper#1 attempt 1" in cancelled.stdout
        assert "aws-demo-agent" in cancelled.stdout
        shown = estate.cli("runs", "show", run_id, check=True).stdout
        # On a loaded machine the agent's lease (LOST_AFTER_S) may lapse before `runs show`
        # runs; the cancel then completes without it, and there is nothing left to wait for.
        state_line = next(line for line in shown.splitlines() if line.startswith("State"))
        if state_line.split()[-1] == "CANCELLING":
            assert "waits for agent aws-demo-agent to confirm" in shown

        seen: list[tuple[str, float]] = []

        def status() -> str:
            listed = json.loads(estate.cli("agents", "list", "--json", check=True).stdout)
            [me] = [a for a in listed if a["name"] == "aws-demo-agent"]
            seen.append((me["status"], me["heartbeat_age_s"] or 0.0))
            return str(me["status"])

        poll_until(lambda: status() == "stale", interval=0.2, message=lambda: f"stale: {seen}")
        poll_until(lambda: status() in ("lost", "disconnected"), interval=0.2,
                   message=lambda: f"lost/disconnected: {seen}")  # fmt: skip
        # Never "connected" with a heartbeat older than a few intervals.
        assert not [s for s in seen if s[0] == "connected" and s[1] > 4 * HEARTBEAT_S], seen
        listed = estate.cli("agents", "list", check=True).stdout
        assert "ago" in listed
    finally:
        agent.send_signal(signal.SIGCONT)
        runner.stop()
    # The cancel completes once the agent is back (or its lease lapsed).
    assert estate.wait_for_state(run_id, {"CANCELLED"}) == "CANCELLED"
    _all_gone(pids)
    estate.wait_until(lambda: estate._connected("aws-demo-agent"), "the agent to be back")
