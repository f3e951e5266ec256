"""End to end: a real control plane and three real agents (separate processes, loopback TLS)
run flows through `meridian run`, and the audit view tells what happened."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tests.integration.harness import FLOWS, Estate
from tests.support.deadlines import DEADLINE_S
from tests.support.polling import poll_until

FLOW_FILE = FLOWS / "estate_flows.py"


def run(estate: Estate, flow: str, *params: str) -> tuple[int, str, dict]:
    args = ["run", f"{FLOW_FILE}:{flow}"]
    for p in params:
        args += ["-p", p]
    result = estate.cli(*args)
    run_id = estate.client().list_runs(limit=1, flow_name=flow)[0].flow_run_id
    shown = estate.cli("runs", "show", run_id, "--json", check=True)
    return result.returncode, result.stdout + result.stderr, json.loads(shown.stdout)


def attempts(detail: dict, key_prefix: str) -> list[dict]:
    return [a for s in detail["steps"] if s["key"].startswith(key_prefix) for a in s["attempts"]]


def test_fan_out_across_three_environments(estate: Estate) -> None:
    code, output, detail = run(estate, "fan_out", "n=4")
    assert code == 0, output
    assert detail["state"] == "COMPLETED"
    assert detail["result"] == {
        "aws": "first",
        "squares": [0, 1, 4, 9],
        "total": 14,
    }
    envs = {s["key"]: {a["environment"] for a in s["attempts"]} for s in detail["steps"]}
    assert envs["on_aws#1"] == {"aws-demo"}
    assert all(envs[f"on_gcp#{i}"] == {"gcp-demo"} for i in range(1, 5))
    assert envs["on_prem#1"] == {"onprem-demo"}


def test_flaky_step_is_retried_and_recorded_as_recovered(estate: Estate, tmp_path: Path) -> None:
    code, output, detail = run(estate, "recovers", f"work={tmp_path}")
    assert code == 0, output
    first, second = attempts(detail, "flaky#1")
    assert first["state"] == "FAILED" and first["recovered"]
    assert first["error"]["error_class"] == "transient"
    assert first["error"]["type"] == "builtins.ConnectionError"
    assert second["state"] == "SUCCEEDED"
    assert (tmp_path / "flaky.calls").read_text() == "xx"
    shown = estate.cli("runs", "show", detail["flow_run_id"], check=True).stdout
    assert "ConnectionError" in shown and "recovered" in shown.lower()


def test_permanent_failure_reports_error_and_traceback(estate: Estate) -> None:
    code, output, detail = run(estate, "fails_permanently")
    assert code != 0
    assert detail["state"] == "FAILED"
    (only,) = attempts(detail, "rejects#1")  # Permanent: never retried despite retries=3
    assert only["error"]["error_class"] == "permanent"
    assert "value 7 is not acceptable" in only["error"]["message"]
    assert "raise Permanent" in only["error"]["traceback"]
    assert "value 7 is not acceptable" in output


def test_flow_body_can_catch_a_step_failure(estate: Estate) -> None:
    code, output, detail = run(estate, "compensates")
    assert code == 0, output
    assert detail["result"] == "caught meridian.core.errors.Permanent"


def test_timeout_kills_the_step_process_and_is_retried_as_timeout(
    estate: Estate, tmp_path: Path
) -> None:
    code, _, detail = run(estate, "times_out", f"work={tmp_path}")
    assert code != 0
    tries = attempts(detail, "hangs#1")
    assert [a["state"] for a in tries] == ["TIMED_OUT", "TIMED_OUT"]
    assert all(a["error"]["error_class"] == "timeout" for a in tries)
    pids = [int(p) for p in (tmp_path / "hang.pids").read_text().split()]
    assert len(pids) == 2
    poll_until(
        lambda: not any(_alive(pid) for pid in pids),
        interval=0.1,
        message=lambda: f"step processes {[p for p in pids if _alive(p)]} to exit",
    )


def test_step_waits_for_an_agent_that_connects_late(estate: Estate) -> None:
    runner = estate.cli_background("run", f"{FLOW_FILE}:waits_for_late_agent")
    time.sleep(2)
    assert runner.poll() is None, "the run must wait, not fail, while no agent matches"
    estate.add_agent("late-site", {"site": "late"})
    assert runner.wait(timeout=DEADLINE_S) == 0
    run_id = estate.client().list_runs(limit=1, flow_name="waits_for_late_agent")[0].flow_run_id
    detail = json.loads(estate.cli("runs", "show", run_id, "--json", check=True).stdout)
    assert detail["state"] == "COMPLETED"
    assert attempts(detail, "on_late_site#1")[0]["environment"] == "late-site"


def test_impossible_target_fails_with_the_environments_that_exist(estate: Estate) -> None:
    code, output, detail = run(estate, "impossible_target")
    assert code != 0
    (only,) = attempts(detail, "on_azure#1")
    assert only["error"]["error_class"] == "scheduling"
    message = only["error"]["message"]
    assert "cloud=azure" in message
    for env in ("aws-demo", "gcp-demo", "onprem-demo"):
        assert env in message
    assert "cloud=azure" in output


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def test_invalid_provider_options_fail_the_submission(estate: Estate) -> None:
    code, output, detail = run(estate, "bad_options")
    assert code != 0
    assert "provider 'process' rejects its options" in output
    assert detail["state"] == "FAILED"
    assert detail["steps"] == []  # refused at submission: nothing was queued or run


def test_a_step_process_gets_the_traceparent_of_its_attempt(estate: Estate) -> None:
    """Spans a step creates join the run's trace, under its attempt's span (the ids are the
    ones the control plane exports for the run: meridian.core.tracecontext)."""
    from meridian.core.tracecontext import traceparent

    code, output, detail = run(estate, "trace_context")
    assert code == 0, output
    [attempt] = attempts(detail, "traced")
    expected = traceparent(detail["flow_run_id"], attempt["attempt_id"])
    assert detail["result"] == expected
