"""Steps written to misbehave cannot wedge an agent (issue 11): a real control plane, real
agent processes and real step processes.

Every case checks that the user sees why (in the run's events and ``runs show``), that a step
running beside the hostile one on the same agent keeps running and succeeds (which also proves
heartbeats kept flowing: the estate declares an agent lost after a few silent seconds), that no
attempt is left RUNNING, and that nothing acknowledged is lost or replayed.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meridian import models
from protos.meridian.v1 import control_pb2
from tests.faults.invariants import check_history
from tests.integration.harness import Estate, child_env, meridian_cmd
from tests.support.deadlines import DEADLINE_S
from tests.support.polling import poll_until

MiB = 1024 * 1024
LOG_HEAD = 64 * 1024
LOG_TAIL = 16 * 1024

FLOWS = textwrap.dedent(
    '''
    """Hostile steps for tests/faults/test_hostile_steps.py."""

    from __future__ import annotations

    import json
    import os
    import signal
    import sys
    import time
    from pathlib import Path

    from meridian import StepFailed, flow, step

    MiB = 1024 * 1024


    @step(target="site=hostile")
    def keeper(work: str, name: str) -> str:
        """Runs beside the hostile steps until the flow says it may stop."""
        Path(work, f"{name}.running").touch()
        while not Path(work, f"{name}.release").exists():
            time.sleep(0.05)
        return "kept running"


    @step(target="site=hostile", retries=2, retry_delay=0.1)
    def big_result(mb: int) -> str:
        return "x" * (mb * MiB)


    @step(target="site=hostile", retries=2, retry_delay=0.1)
    def big_error(mb: int) -> str:
        # stepexec trims an exception's text itself, so write the outcome it would have
        # written, with an error of megabytes, and leave before it can write its own.
        message = "e" * (mb * MiB)
        error = {"error_class": "transient", "type": "builtins.ValueError", "message": message}
        Path("outcome.json").write_text(json.dumps({"state": "failed", "error": error}))
        os._exit(1)


    @step(target="site=hostile")
    def flood(mb: int) -> str:
        line = "y" * 1000
        for i in range(mb * 1024):
            sys.stdout.write(f"line {i} {line}\\n")
        sys.stdout.flush()
        return "flooded"


    @step(target="site=hostile", retries=1, retry_delay=0.1, options={"cwd": "no/such/dir"})
    def provider_raises() -> str:
        return "never"


    def _try(fn, *args) -> str:
        try:
            return f"ok: {str(fn(*args))[:40]}"
        except StepFailed as exc:
            return f"failed: {str(exc)[:200]}"


    @flow
    def hostile(work: str) -> dict:
        kept = keeper.submit(work, "hostile")
        while not Path(work, "hostile.running").exists():
            time.sleep(0.05)
        out = {
            "result": _try(big_result, 5),
            "error": _try(big_error, 2),
            "flood": _try(flood, 20),
            "provider": _try(provider_raises),
        }
        Path(work, "hostile.release").touch()
        out["keeper"] = kept.result()
        return out


    @step(target="site=hostile")
    def stubborn(work: str) -> str:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        Path(work, "stubborn.pid").write_text(str(os.getpid()))
        time.sleep(600)
        return "never"


    @flow
    def ignores_sigterm(work: str) -> str:
        return stubborn(work)


    @step(target="site=disk")
    def disk_keeper(work: str) -> str:
        Path(work, "disk.running").touch()
        while not Path(work, "disk.release").exists():
            time.sleep(0.05)
        return "kept running"


    @step(target="site=disk", retries=2, retry_delay=0.1)
    def hog(work: str) -> str:
        marker = Path(work, "hog.done")
        if marker.exists():
            return "no hogging the second time"
        marker.touch()
        with open("hog.bin", "wb") as fh:  # the attempt's work dir, on the small disk
            while True:
                fh.write(b"h" * MiB)
                fh.flush()


    @flow
    def fills_disk(work: str) -> str:
        kept = disk_keeper.submit(work)
        while not Path(work, "disk.running").exists():
            time.sleep(0.05)
        first = hog(work)
        return f"{first} / {kept.result()}"
    '''
)


def _limits_config(root: Path, **extra: int) -> Path:
    values = {"log_head_bytes": LOG_HEAD, "log_tail_bytes": LOG_TAIL, **extra}
    path = root / f"agent-limits-{len(extra)}.toml"
    path.write_text("[limits]\n" + "".join(f"{k} = {v}\n" for k, v in values.items()))
    return path


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except FileNotFoundError:
        pytest.skip("no mount command: cannot create a small filesystem to fill")
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {done.stderr.strip()}")


@pytest.fixture(scope="module")
def estate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Estate]:
    root = tmp_path_factory.mktemp("hostile")
    estate = Estate(root / "estate", lost_after_s=4.0, heartbeat_s=0.5).start()
    try:
        (root / "work").mkdir()
        # In a directory of its own: the flow's code bundle is that directory.
        (root / "flows").mkdir()
        (root / "flows" / "hostile_flows.py").write_text(FLOWS)
        estate.add_agent(
            "hostile", {"site": "hostile"}, name="hostile", config=_limits_config(root)
        )
        yield estate
    except BaseException:
        print(estate.logs())
        raise
    finally:
        estate.stop()


def _paths(estate: Estate) -> tuple[Path, Path]:
    root = estate.root.parent
    return root / "flows" / "hostile_flows.py", root / "work"


def _raw_agents(estate: Estate) -> dict[str, control_pb2.AgentInfo]:
    client = estate.client()
    response = client._call(client._stub.ListAgents, control_pb2.ListAgentsRequest())
    return {a.name: a for a in response.agents}


def _attempts(detail: models.RunDetail, name: str) -> list[models.AttemptDetail]:
    return [a for s in detail.steps if s.key.startswith(name + "#") for a in s.attempts]


def _show(estate: Estate, run_id: str) -> str:
    return estate.cli("runs", "show", run_id, check=True).stdout


def _journal_counts(data_dir: Path) -> tuple[int, int]:
    with sqlite3.connect(data_dir / "journal.sqlite") as db:
        (reports,) = db.execute("SELECT COUNT(*) FROM reports").fetchone()
        (quarantined,) = db.execute("SELECT COUNT(*) FROM quarantine").fetchone()
    return int(reports), int(quarantined)


def _peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def test_oversize_payloads_log_floods_and_provider_errors_fail_only_their_attempt(
    estate: Estate,
) -> None:
    flows, work = _paths(estate)
    runner = estate.run_background(flows, "hostile", f"work={work}")
    assert runner.wait(timeout=3 * DEADLINE_S) == 0, estate.logs()
    run_id = estate.latest_run_id("hostile")
    detail = estate.client().get_run(run_id)
    assert detail.state == "COMPLETED", estate.logs()
    check_history(detail)
    show = _show(estate, run_id)

    # Oversize result and error: one attempt each (permanent), explained, and the step failed.
    for name, what in (("big_result", "result"), ("big_error", "error")):
        found = _attempts(detail, name)
        assert len(found) == 1, [(a.state, a.error) for a in found]
        (only,) = found
        assert only.state == "FAILED" and only.error is not None
        assert only.error.error_class == "permanent"
        assert f"step's {what} is" in only.error.message
        assert "return a reference" in only.error.message
    assert "return a reference" in show

    # A provider that raises: infrastructure errors, retried by the normal policy, visible.
    attempts = _attempts(detail, "provider_raises")
    assert len(attempts) == 2
    for attempt in attempts:
        assert attempt.error is not None and attempt.error.error_class == "infrastructure"
        assert "could not start the step" in attempt.error.message
    assert "could not start the step" in show

    # The log flood: completed, head and tail kept, the drop said so, memory bounded.
    (flooded,) = _attempts(detail, "flood")
    assert flooded.state == "SUCCEEDED"
    lines = estate.client().get_logs(run_id, step_key="flood#1").lines
    texts = [entry.line.text for entry in lines]
    assert texts[0].startswith("line 0 ")
    assert texts[-1].startswith(f"line {20 * 1024 - 1} "), [(t[:60]) for t in texts[-3:]] + [
        len(texts)
    ]
    notices = [t for t in texts if "dropped" in t]
    assert len(notices) == 1 and "lines /" in notices[0] and "bytes dropped" in notices[0]
    kept = sum(len(t) + 1 for t in texts if "dropped" not in t)
    assert kept <= LOG_HEAD + LOG_TAIL + 2048
    agent_pid = estate.agents["hostile"].pid
    assert _peak_rss_bytes(agent_pid) < 600 * MiB

    # The step beside them ran throughout, on one attempt: the agent never went silent.
    (kept_attempt,) = _attempts(detail, "keeper")
    assert kept_attempt.state == "SUCCEEDED"
    assert _raw_agents(estate)["hostile"].status == "connected"

    # Nothing waits in the journal, nothing was quarantined, and a restart replays nothing.
    events_before = len(detail.events)
    estate.kill_agent("hostile", 15)
    data_dir = estate.root / "agents" / "hostile"
    assert _journal_counts(data_dir) == (0, 0)
    estate.start_agent(
        "hostile",
        "hostile",
        {"site": "hostile"},
        config=_limits_config(estate.root.parent),
    )
    after = estate.client().get_run(run_id)
    assert len(after.events) == events_before
    assert not any(e.kind.startswith("report.") for e in after.events)


def test_a_step_ignoring_sigterm_is_killed_and_the_cancel_completes(estate: Estate) -> None:
    flows, work = _paths(estate)
    runner = estate.run_background(flows, "ignores_sigterm", f"work={work}")
    run_id = estate.latest_run_id("ignores_sigterm")
    pid_file = work / "stubborn.pid"
    estate.wait_until(pid_file.exists, "the stubborn step to start")
    pid = int(pid_file.read_text())
    estate.client().cancel_run(run_id, reason="test cancels a stubborn step")
    assert estate.wait_for_state(run_id, {"CANCELLED"}) == "CANCELLED"
    runner.wait(timeout=DEADLINE_S)
    detail = estate.client().get_run(run_id)
    (attempt,) = _attempts(detail, "stubborn")
    assert attempt.state == "CANCELLED"
    check_history(detail)
    # SIGTERM was ignored, so the process group got SIGKILL: the step process is gone.
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    assert _raw_agents(estate)["hostile"].status == "connected"


def test_a_full_disk_fails_the_attempt_degrades_the_agent_and_it_recovers(
    estate: Estate,
) -> None:
    flows, work = _paths(estate)
    data_dir = estate.root / "agents" / "disk"
    _mount_tmpfs(data_dir, "40m")
    try:
        config = _limits_config(
            estate.root.parent, min_free_bytes=2 * MiB, disk_reserve_bytes=2 * MiB
        )
        estate.add_agent("disk", {"site": "disk"}, name="disk", config=config)
        runner = estate.run_background(flows, "fills_disk", f"work={work}")
        run_id = estate.latest_run_id("fills_disk")

        # The hog's attempt fails with the reason, and the agent says it is degraded.
        estate.wait_until(
            lambda: _raw_agents(estate)["disk"].degraded == "disk_full", "agent degraded"
        )
        failed: list[models.AttemptDetail] = []

        def hog_failed() -> bool:
            failed[:] = [
                a for a in _attempts(estate.client().get_run(run_id), "hog") if a.state == "FAILED"
            ]
            return bool(failed)

        estate.wait_until(hog_failed, "the hog's attempt to fail")
        assert failed[0].error is not None
        assert failed[0].error.error_class == "infrastructure"
        assert "disk is full" in failed[0].error.message
        assert "disk is full" in _show(estate, run_id)
        # The step beside it keeps running; the agent stays connected.
        detail = estate.client().get_run(run_id)
        (kept,) = _attempts(detail, "disk_keeper")
        assert kept.state == "RUNNING"
        assert _raw_agents(estate)["disk"].status == "connected"

        # Free the space: the agent recovers by itself and the retry runs.
        for hog_file in data_dir.rglob("hog.bin"):
            hog_file.unlink()
        estate.wait_until(lambda: _raw_agents(estate)["disk"].degraded == "", "agent recovered")
        (work / "disk.release").touch()
        assert runner.wait(timeout=DEADLINE_S) == 0, estate.logs()
        detail = estate.client().get_run(run_id)
        assert detail.state == "COMPLETED"
        assert [a.state for a in _attempts(detail, "hog")] == ["FAILED", "SUCCEEDED"]
        check_history(detail)
    finally:
        if "disk" in estate.agents:
            estate.kill_agent("disk", 15)
        subprocess.run(["umount", "-l", str(data_dir)], capture_output=True, timeout=30)


def test_an_agent_refused_for_its_labels_exits_with_the_reason(estate: Estate) -> None:
    data_dir = estate.root / "agents" / "refused"
    token = estate.new_token("pinned", "--label", "site=pinned")
    estate.enroll(token, data_dir, "--name", "refused", check=True)
    started = subprocess.run(
        meridian_cmd(
            "agent",
            "start",
            "--environment",
            "pinned",
            "--data-dir",
            str(data_dir),
            "--label",
            "site=elsewhere",
        ),
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
        env=child_env(),
    )
    assert started.returncode != 0, started.stderr
    assert "site=elsewhere" in started.stderr  # the banner shows the labels it advertised
    assert "not allowed" in started.stderr and "site=pinned" in started.stderr
    # The agents still connected are unaffected.
    poll_until(lambda: _raw_agents(estate)["hostile"].status == "connected", timeout=DEADLINE_S)


def test_a_blocked_agent_loop_is_visible_at_the_control_plane(estate: Estate) -> None:
    """The agent's watchdog measures how late its event loop wakes; the next heartbeat carries
    the stall, and `agents list` shows it. Freezing the process (SIGSTOP) for longer than the
    stall threshold but shorter than the agent's lease is what a blocking call looks like."""
    agent = estate.agents["hostile"]
    agent.send_signal(signal.SIGSTOP)
    try:
        time.sleep(2.0)  # > loop_stall_s (1 s), < the estate's lost_after (4 s)
    finally:
        agent.send_signal(signal.SIGCONT)
    stalled = poll_until(
        lambda: _raw_agents(estate)["hostile"].loop_stall_ms, message="no loop stall reported"
    )
    assert stalled >= 1000
    listed = estate.cli("agents", "list", check=True).stdout
    assert "loop blocked" in listed
