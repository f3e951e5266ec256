"""Command handlers with a fake client: lists, logs, run progress, agent identity checks."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from meridian import models
from meridian.cli import agent as agent_cmd
from meridian.cli import agents as agents_cmd
from meridian.cli import logs as logs_cmd
from meridian.cli import run as run_cmd
from meridian.cli import runs as runs_cmd
from meridian.cli.common import parse_labels, parse_params

NOW = datetime(2024, 6, 1, 12, 0, 0, tzinfo=UTC)


class FakeClient:
    def __init__(self) -> None:
        self.log_calls: list[tuple[str, str, int]] = []

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def list_runs(self, limit: int = 50, state: str = "", flow_name: str = ""):
        self.list_args = (limit, state, flow_name)
        return [models.RunSummary("run-1", "etl", "FAILED", NOW, NOW + timedelta(seconds=3), 5, 1)]

    def get_run(self, run_id: str) -> SimpleNamespace:
        return SimpleNamespace(flow_run_id="run-1-full")

    def get_logs(self, run_id: str, step_key: str = "", after_id: int = 0, limit: int = 0):
        self.log_calls.append((run_id, step_key, after_id))
        if after_id:
            return models.LogPage(lines=(), next_after_id=after_id)
        line = models.LogLine(NOW, "stdout", "wrote 3 rows")
        return models.LogPage(lines=(models.StepLogLine(7, "load#1", 2, line),), next_after_id=7)

    def list_agents(self):
        return [
            models.AgentInfo(
                agent_id="a1",
                name="aws-agent",
                environment="aws-demo",
                labels={"region": "us-east-1", "cloud": "aws"},
                providers=("process",),
                capacity=4,
                in_use=1,
                version="0.1.0",
                last_heartbeat=datetime.now(UTC) - timedelta(seconds=2),
                status="connected",
            )
        ]


@pytest.fixture
def fake(monkeypatch) -> FakeClient:
    client = FakeClient()
    for module in (runs_cmd, agents_cmd, run_cmd, logs_cmd):
        monkeypatch.setattr(module, "connect", lambda args: client)
    return client


def test_runs_list_table_and_filters(cli, fake) -> None:
    result = cli("runs", "list", "--state", "failed", "--flow", "etl", "--limit", "5")
    assert result.code == 0
    assert fake.list_args == (5, "FAILED", "etl")
    header, row = result.out.strip().splitlines()
    assert header.split()[:3] == ["RUN", "FLOW", "STATE"]
    assert "run-1" in row and "3.0s" in row and "5 (1 failed)" in row


def test_runs_list_json(cli, fake) -> None:
    result = cli("runs", "list", "--json")
    assert json.loads(result.out)[0]["ended_at"] == "2024-06-01T12:00:03.000Z"


def test_runs_logs_resolves_prefix_and_pages(cli, fake) -> None:
    result = cli("runs", "logs", "run-1", "--step", "load")
    assert result.code == 0
    assert fake.log_calls == [("run-1-full", "load", 0), ("run-1-full", "load", 7)]
    assert "load#1 #2 stdout | wrote 3 rows" in result.out


def test_agents_list(cli, fake) -> None:
    result = cli("agents", "list")
    assert result.code == 0
    header, row = result.out.strip().splitlines()
    assert "IN USE/CAPACITY" in header and "HEARTBEAT" in header
    assert "cloud=aws,region=us-east-1" in row and "1/4" in row and "connected" in row
    assert "s ago" in row


def test_agents_list_json(cli, fake) -> None:
    document = json.loads(cli("agents", "list", "--json").out)
    assert document[0]["labels"] == {"cloud": "aws", "region": "us-east-1"}
    assert document[0]["heartbeat_age_s"] > 0


def test_agents_list_empty() -> None:
    assert "no agents" in agents_cmd.render_agents([], NOW)


def test_agents_list_says_why_an_agent_is_degraded() -> None:
    degraded = models.AgentInfo(
        "a1", "dc1-agent", "onprem", status="connected", degraded="disk_full"
    )
    healthy = models.AgentInfo("a2", "aws-agent", "aws", status="connected")
    shown = agents_cmd.render_agents([degraded, healthy], NOW)
    assert "connected (degraded: disk_full)" in shown
    listed = agents_cmd.agents_to_json([degraded, healthy], NOW)
    assert [a["degraded"] for a in listed] == ["disk_full", ""]


def test_progress_lines_are_deduplicated() -> None:
    stream = io.StringIO()
    printer = run_cmd.ProgressPrinter(stream)
    error = models.ErrorInfo("transient", "builtins.ConnectionResetError", "reset")
    outcome = models.StepOutcome("sr", "load#1", "FAILED", error=error)
    printer(models.RunUpdate(1, NOW, "attempt.running", "load#1", message="on onprem-demo"))
    printer(models.RunUpdate(1, NOW, "attempt.running", "load#1", message="on onprem-demo"))
    printer(models.RunUpdate(2, NOW, "step.failed", "load#1", step_outcome=outcome))
    printer(models.RunUpdate(3, NOW, "run.state", run_state="FAILED"))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("12:00:00.000  load#1") and "on onprem-demo" in lines[0]
    assert "transient: ConnectionResetError: reset" in lines[1]
    assert "run.finished" in lines[2] and "FAILED" in lines[2]


def fake_outcome(state: str) -> SimpleNamespace:
    return SimpleNamespace(flow_run_id="run-9", state=state, result={"n": 1}, error=None)


@pytest.mark.parametrize(("state", "code"), [("COMPLETED", 0), ("FAILED", 1)])
def test_run_exit_code_and_hint(cli, fake, monkeypatch, tmp_path: Path, state, code) -> None:
    flows = tmp_path / "flows.py"
    flows.write_text("")
    calls = []

    def run_flow(client, entrypoint, raw_params, *, on_update=None):
        calls.append((entrypoint, dict(raw_params)))
        return fake_outcome(state)

    monkeypatch.setattr("meridian.sdk.runner.run_flow", run_flow, raising=False)
    result = cli("run", f"{flows}:etl", "-p", "day=2024-06-01", "-p", "note=a=b")
    assert result.code == code
    assert calls == [(f"{flows}:etl", {"day": "2024-06-01", "note": "a=b"})]
    assert f"finished: {state}" in result.out
    assert "meridian runs show run-9" in result.out


def test_run_json(cli, fake, monkeypatch, tmp_path: Path) -> None:
    flows = tmp_path / "flows.py"
    flows.write_text("")
    monkeypatch.setattr(
        "meridian.sdk.runner.run_flow",
        lambda *a, **k: fake_outcome("COMPLETED"),
        raising=False,
    )
    result = cli("run", f"{flows}:etl", "--json")
    assert json.loads(result.out) == {
        "flow_run_id": "run-9",
        "state": "COMPLETED",
        "result": {"n": 1},
        "error": None,
    }


def test_parse_helpers() -> None:
    assert parse_params(["a=1", "b=", "c=x=y"]) == {"a": "1", "b": "", "c": "x=y"}
    assert parse_labels(["cloud=aws,region=us-east-1", "example.com/tier=gold"]) == {
        "cloud": "aws",
        "region": "us-east-1",
        "example.com/tier": "gold",
    }


# ---- agent start / enroll ----------------------------------------------------------------------


def enrolled_dir(tmp_path: Path, environment: str = "aws-demo") -> Path:
    agent_cmd.write_identity(tmp_path, "agent-1", environment, "127.0.0.1:7443")
    return tmp_path


def test_agent_start_requires_enrollment(cli, tmp_path: Path) -> None:
    result = cli("agent", "start", "--environment", "aws-demo", "--data-dir", str(tmp_path))
    assert result.code == 1
    assert "not enrolled" in result.err and len(result.err.splitlines()) == 1


def test_agent_start_environment_must_match(cli, tmp_path: Path) -> None:
    data_dir = enrolled_dir(tmp_path)
    result = cli("agent", "start", "--environment", "gcp-demo", "--data-dir", str(data_dir))
    assert result.code == 2
    assert "does not match" in result.err and "'aws-demo'" in result.err


def test_agent_config_from_options(tmp_path: Path) -> None:
    from meridian.cli.main import build_parser

    data_dir = enrolled_dir(tmp_path)
    args = build_parser().parse_args(
        [
            "agent",
            "start",
            "--environment",
            "aws-demo",
            "--data-dir",
            str(data_dir),
            "--label",
            "cloud=aws",
            "--label",
            "region=us-east-1",
            "--capacity",
            "2",
            "--drain-grace",
            "7",
        ]
    )
    config = agent_cmd.build_agent_config(args)
    assert config.control_plane == "127.0.0.1:7443"  # from identity.json
    assert dict(config.labels) == {"cloud": "aws", "region": "us-east-1"}
    assert tuple(config.providers) == ("process",)
    assert config.capacity == 2 and config.drain_grace_s == 7.0
    assert config.runner_fork_server  # hosted runners are forked unless told otherwise


def test_agent_start_can_turn_the_runner_fork_server_off(tmp_path: Path) -> None:
    from meridian.cli.main import build_parser

    data_dir = enrolled_dir(tmp_path)
    args = build_parser().parse_args(
        ["agent", "start", "--environment", "aws-demo", "--data-dir", str(data_dir),
         "--runner-slots", "2", "--no-runner-fork-server"]
    )  # fmt: skip
    config = agent_cmd.build_agent_config(args)
    assert config.runner_slots == 2 and not config.runner_fork_server


def test_write_identity_keeps_extra_keys(tmp_path: Path) -> None:
    (tmp_path / "identity.json").write_text('{"extra": 1, "environment": "old"}')
    agent_cmd.write_identity(tmp_path, "a", "new", "h:1")
    assert json.loads((tmp_path / "identity.json").read_text()) == {
        "extra": 1,
        "agent_id": "a",
        "environment": "new",
        "control_plane": "h:1",
    }


def test_agent_enroll_unreachable(cli, ca_file: Path, closed_port: int, tmp_path) -> None:
    result = cli(
        "agent",
        "enroll",
        "--control-plane",
        f"127.0.0.1:{closed_port}",
        "--ca-file",
        str(ca_file),
        "--token",
        "t",
        "--data-dir",
        str(tmp_path / "a"),
    )
    assert result.code == 1
    assert result.err.startswith("error: ") and len(result.err.splitlines()) == 1
    assert "Traceback" not in result.err


def test_tokens_need_an_existing_data_dir(cli, tmp_path: Path) -> None:
    result = cli("tokens", "create", "--environment", "x", "--data-dir", str(tmp_path / "nope"))
    assert result.code == 1
    assert "meridian server start" in result.err
