"""Degraded states: a local fault stops new work until the probe sees it cleared."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

import pytest

from agent import health as health_module
from agent.health import DISK_FULL, WORK_DIR_UNWRITABLE, Health, fault_reason
from agent.limits import AgentLimits

MiB = 1024 * 1024


def test_local_errors_map_to_degraded_reasons() -> None:
    assert fault_reason(OSError(errno.ENOSPC, "No space left on device")) == DISK_FULL
    assert fault_reason(sqlite3.OperationalError("database or disk is full")) == DISK_FULL
    assert fault_reason(PermissionError(errno.EACCES, "denied")) == WORK_DIR_UNWRITABLE
    wrapped = RuntimeError("provider failed")
    wrapped.__cause__ = OSError(errno.ENOSPC, "full")
    assert fault_reason(wrapped) == DISK_FULL
    assert fault_reason(ValueError("a bug")) is None


def test_disk_full_releases_the_reserve_and_recovers_when_space_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    free = {"bytes": 100 * MiB}
    monkeypatch.setattr(health_module, "free_bytes", lambda path: free["bytes"])
    limits = AgentLimits(min_free_bytes=1 * MiB, disk_reserve_bytes=64 * 1024)
    health = Health(tmp_path, tmp_path / "work", limits)
    assert health.take_reserve() and (tmp_path / "disk.reserve").stat().st_size == 64 * 1024
    assert health.probe() == ""

    free["bytes"] = 10 * 1024  # a step filled the disk
    health.fault(DISK_FULL, "journal write failed")
    assert health.degraded == DISK_FULL
    assert not (tmp_path / "disk.reserve").exists()  # freed for the journal
    assert health.probe() == DISK_FULL  # still full: stays degraded

    free["bytes"] = 2 * MiB  # above the minimum, but not above the hysteresis
    assert health.probe() == DISK_FULL
    free["bytes"] = 100 * MiB
    assert health.probe() == ""
    assert (tmp_path / "disk.reserve").exists()  # taken again


def test_the_probe_notices_a_disk_filling_up_by_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(health_module, "free_bytes", lambda path: 1024)
    health = Health(tmp_path, tmp_path / "work", AgentLimits(min_free_bytes=MiB))
    assert health.probe() == DISK_FULL


def test_an_unwritable_work_dir_clears_once_writable(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.write_text("a file where the work dir should be")
    health = Health(tmp_path, work, AgentLimits(min_free_bytes=1))
    health.fault(WORK_DIR_UNWRITABLE, "cannot create the work dir")
    assert health.probe() == WORK_DIR_UNWRITABLE
    work.unlink()
    assert health.probe() == ""


def test_the_stall_meter_reports_the_longest_stall_once() -> None:
    meter = health_module.StallMeter()
    assert meter.take_ms() == 0
    meter.record(1.5)
    meter.record(0.25)
    assert meter.take_ms() == 1500
    assert meter.take_ms() == 0  # read by one heartbeat, then cleared


def test_the_watchdog_notices_a_blocked_event_loop() -> None:
    import asyncio
    import time

    stalls: list[float] = []

    async def scenario() -> None:
        watchdog = asyncio.ensure_future(health_module.loop_watchdog(0.05, stalls.append))
        await asyncio.sleep(0.05)  # let it start its first tick
        time.sleep(0.3)  # what a blocking call on the loop does
        await asyncio.sleep(0.1)
        watchdog.cancel()

    asyncio.run(scenario())
    assert stalls and max(stalls) >= 0.2
