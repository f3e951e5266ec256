"""Operators manage agent identities: list and revoke join tokens, drain and revoke agents."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import FLOWS, Estate

FLOW = FLOWS / "admin_flows.py"


@pytest.fixture(scope="module")
def estate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Estate]:
    with Estate(tmp_path_factory.mktemp("admin"), heartbeat_s=0.5) as e:
        e.add_agent("edge", {"site": "edge"}, name="edge-1")
        yield e


def status_of(estate: Estate, name: str) -> str:
    return next(a.status for a in estate.client().list_agents() if a.name == name)


def tokens(estate: Estate) -> list[dict]:
    listed = estate.cli("tokens", "list", "--data-dir", str(estate.server_dir), "--json")
    assert listed.returncode == 0, listed.stderr
    return json.loads(listed.stdout)


def test_tokens_list_shows_states_and_revoked_tokens_cannot_enroll(
    estate: Estate, tmp_path: Path
) -> None:
    assert [t["state"] for t in tokens(estate)] == ["used"]
    token = estate.new_token("edge")
    token_id = token.removeprefix("mjt_").split(".")[0]
    revoked = estate.cli("tokens", "revoke", token_id, "--data-dir", str(estate.server_dir))
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    assert sorted(t["state"] for t in tokens(estate)) == ["revoked", "used"]
    enroll = estate.enroll(token, tmp_path / "agent")
    assert enroll.returncode != 0 and "revoked" in enroll.stderr
    assert "Traceback" not in enroll.stderr


def test_drained_agent_gets_no_new_work(estate: Estate) -> None:
    drained = estate.cli("agents", "drain", "edge-1", "--reason", "maintenance")
    assert drained.returncode == 0, drained.stderr
    estate.wait_until(lambda: status_of(estate, "edge-1") == "draining", "edge-1 to drain")
    run = estate.cli("run", f"{FLOW}:edge_job")
    assert run.returncode != 0
    assert "draining" in run.stdout + run.stderr  # the scheduling error says why


def test_revoked_agent_is_disconnected_and_refused(estate: Estate) -> None:
    revoked = estate.cli("agents", "revoke", "edge-1", "--reason", "key leaked")
    assert revoked.returncode == 0, revoked.stderr
    assert "revoked" in revoked.stdout
    log = estate.root / "agent-edge-1.log"
    # Its stream was closed as refused: retrying cannot help, so the agent exits non-zero and
    # says why (a reconnect would be refused too).
    agent = estate.agents["edge-1"]
    estate.wait_until(lambda: agent.poll() is not None, "the revoked agent to exit")
    assert agent.returncode != 0
    assert "revoked" in log.read_text(errors="replace")
    assert status_of(estate, "edge-1") == "revoked"
    audit = estate.cli("audit", "list", "--json")
    assert audit.returncode == 0, audit.stderr
    actions = [r["action"] for r in json.loads(audit.stdout)]
    assert "agent.revoked" in actions and "agent.drained" in actions
    verify = estate.cli("audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_second_agent_on_a_data_dir_refuses_to_start_and_the_first_keeps_running(
    estate: Estate,
) -> None:
    # Its own agent: the tests above drain and revoke edge-1.
    estate.add_agent("edge", {"site": "edge"}, name="edge-lock")
    first = estate.agents["edge-lock"]
    data_dir = str(estate.root / "agents" / "edge-lock")
    second = estate.cli(
        "agent", "start", "--environment", "edge", "--data-dir", data_dir, "--drain-grace", "1"
    )
    assert second.returncode != 0
    assert f"agent data dir {data_dir} is in use by pid {first.pid}" in second.stderr
    assert "Traceback" not in second.stderr
    enroll = estate.enroll(estate.new_token("edge"), data_dir)
    assert enroll.returncode != 0 and "is in use by pid" in enroll.stderr
    # The first never lost its connection to a twin and still runs.
    assert first.poll() is None
    assert status_of(estate, "edge-lock") == "connected"
    log = (estate.root / "agent-edge-lock.log").read_text(errors="replace")
    assert "took over" not in log
