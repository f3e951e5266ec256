"""Agent certificates rotate over the stream without disturbing the step that is running.

A real control plane issues 12-second certificates, so a real agent rotates after 8 s, and the
control plane closes the stream when the certificate it was opened with expires (TLS checks
expiry only at the handshake). One step sleeps through two rotations and two such
reconnections; it must finish in its first attempt.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.integration.harness import FLOWS, Estate
from tests.support.deadlines import DEADLINE_S

FLOW = FLOWS / "rotation_flows.py"
LIFETIME_S = 12.0


@pytest.fixture
def estate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Estate]:
    with Estate(
        tmp_path_factory.mktemp("rotation"),
        heartbeat_s=0.5,
        agent_certificate_hours=LIFETIME_S / 3600,
    ) as e:
        yield e


def fingerprint(pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(pem)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def rotations(estate: Estate) -> list[dict]:
    listed = estate.cli("audit", "list", "--json", check=True)
    return [r for r in json.loads(listed.stdout) if r["action"] == "agent.rotated"]


def test_certificate_rotates_twice_while_a_step_runs(estate: Estate) -> None:
    estate.add_agent("lab", {"site": "rotating"}, name="rot-1")
    agent_dir = estate.root / "agents" / "rot-1"
    enrolled = fingerprint((agent_dir / "agent.crt").read_bytes())

    runner = estate.run_background(FLOW, "outlives_certificates", "seconds=24")
    run_id = estate.latest_run_id("outlives_certificates")
    # Two rotations (at ~8 s and ~16 s of certificate age) happen while the step sleeps.
    estate.wait_until(lambda: len(rotations(estate)) >= 2, "two rotations")
    assert estate.wait_for_state(run_id, {"COMPLETED", "FAILED"}) == "COMPLETED"
    assert runner.wait(timeout=DEADLINE_S) == 0

    detail = estate.client().get_run(run_id)
    (step,) = detail.steps
    assert [(a.number, a.state, a.agent_name) for a in step.attempts] == [(1, "SUCCEEDED", "rot-1")]

    # The identity on disk is the newest one issued, its key still private, nothing half-done.
    records = rotations(estate)
    on_disk = fingerprint((agent_dir / "agent.crt").read_bytes())
    assert on_disk != enrolled
    assert on_disk in {r["details"]["cert_fingerprint"] for r in records[-2:]}
    assert records[0]["details"]["presented_fingerprint"] == enrolled
    (listed,) = json.loads(estate.cli("agents", "list", "--json", check=True).stdout)
    assert listed["cert_fingerprint"] == records[-1]["details"]["cert_fingerprint"]
    assert listed["cert_not_after"] == records[-1]["details"]["not_after"].replace(
        ".000000Z", ".000Z"
    )
    assert stat.S_IMODE(os.stat(agent_dir / "agent.key").st_mode) == 0o600
    assert not list(agent_dir.glob("*.next"))
    # The agent reconnected with a rotated certificate (the first one expired meanwhile).
    agent_log = (estate.root / "agent-rot-1.log").read_text(errors="replace")
    assert "rotated the agent certificate" in agent_log
    assert agent_log.count("connected to control plane as") >= 2
    verify = estate.cli("audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
