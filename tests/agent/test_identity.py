"""Enrollment storage, error mapping, and the package's public surface."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest

import agent
from agent import enroll
from agent.identity import AgentIdentity, generate_key_and_csr, load_identity, save_identity
from meridian.core.errors import ConnectionFailed, NotFound, PermissionDenied
from tests.agent.fakecp import FakeControlPlane
from tests.support.deadlines import DEADLINE_S
from tests.support.tls import TestPKI


def test_public_api_is_pinned() -> None:
    assert agent.__all__ == ["Agent", "AgentConfig", "EnrollResult", "enroll"]


def test_identity_round_trip_with_private_key_modes(tmp_path: Path) -> None:
    key, csr = generate_key_and_csr("host-1")
    assert b"PRIVATE KEY" in key and b"CERTIFICATE REQUEST" in csr
    data_dir = tmp_path / "agent"
    identity = AgentIdentity("ag-1", "prod", "cp:7443", key, b"CERT", b"CA")
    save_identity(data_dir, identity)
    assert stat.S_IMODE((data_dir / "agent.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert load_identity(data_dir) == identity


def test_not_enrolled_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="run `meridian agent enroll` first"):
        load_identity(tmp_path)


def test_enroll_maps_errors(tmp_path: Path) -> None:
    async def scenario() -> None:
        cp = FakeControlPlane(TestPKI())
        await cp.start()
        ca_file = tmp_path / "ca.pem"
        ca_file.write_bytes(cp.pki.ca_pem)
        try:
            with pytest.raises(PermissionDenied, match="join token is not valid"):
                await asyncio.to_thread(enroll, cp.enroll_address, ca_file, "bad", tmp_path / "a")
            assert not (tmp_path / "a" / "agent.key").exists()  # nothing stored on refusal
            result = await asyncio.to_thread(
                enroll, cp.enroll_address, ca_file, "good-token", tmp_path / "a", "box"
            )
            assert (result.agent_id, result.environment) == ("agent-1", "test-env")
            assert load_identity(tmp_path / "a").control_plane == cp.enroll_address
        finally:
            await cp.stop()

    asyncio.run(asyncio.wait_for(scenario(), DEADLINE_S))


def test_enroll_unreachable_is_connection_failed(tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(TestPKI().ca_pem)
    with pytest.raises(ConnectionFailed, match=r"cannot reach control plane at 127\.0\.0\.1:1"):
        enroll("127.0.0.1:1", ca_file, "token", tmp_path / "a")
