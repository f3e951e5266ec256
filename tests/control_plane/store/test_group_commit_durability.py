"""Nothing acknowledged by group commit is lost to a SIGKILL: a real process runs a burst of
concurrent use cases through ``Store.transact`` (grouped, as the control plane does on SQLite)
and prints each one's id once its ``await`` returned — the moment the control plane would
acknowledge a report or a submission. It is killed with SIGKILL in the middle of the burst,
while groups are being committed; every id it printed must be in the database, once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from sqlalchemy import select

from control_plane.store.db import Store, sqlite_url
from control_plane.store.models import EventRow
from control_plane.store.tx import Tx, record_event
from meridian.core.kinds import EventKind
from tests.control_plane.usecases.helpers import make_store, new_run
from tests.support.deadlines import DEADLINE_S

REPO = Path(__file__).resolve().parents[3]
CONCURRENCY = 32
KILL_AFTER_ACKS = 300


def _report(tx: Tx, run_id: str, n: int) -> int:
    record_event(tx, kind=EventKind.ATTEMPT_RESOURCE, flow_run_id=run_id, message=f"r{n}")
    return n


async def _burst(store: Store, run_id: str) -> None:
    counter = iter(range(10**9))

    async def one_caller() -> None:
        while True:
            n = await store.transact(_report, run_id, next(counter))
            print(f"ack {n}", flush=True)  # acknowledged: it must be durable now

    await asyncio.gather(*(one_caller() for _ in range(CONCURRENCY)))


def child(url: str, run_id: str) -> None:
    """The process that is killed (run with ``python -c``)."""
    store = Store(url)
    assert store.group_commit
    asyncio.run(_burst(store, run_id))


def test_acknowledged_use_cases_survive_a_sigkill_mid_group(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "store.sqlite")
    for store in make_store(url):
        run_id = new_run(store)
    code = (
        "from tests.control_plane.store.test_group_commit_durability import child; "
        f"child({url!r}, {run_id!r})"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    acked: list[int] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            acked.append(int(line.split()[1]))
            if len(acked) >= KILL_AFTER_ACKS:
                os.kill(process.pid, signal.SIGKILL)
                break
        # What it printed before dying was acknowledged too.
        acked += [int(line.split()[1]) for line in process.stdout if line.startswith("ack ")]
    finally:
        process.kill()
        process.wait(timeout=DEADLINE_S)
    assert process.returncode == -signal.SIGKILL
    assert len(acked) >= KILL_AFTER_ACKS
    after = Store(url)
    try:
        stored = after.run_sync(
            lambda s: list(
                s.scalars(
                    select(EventRow.message).where(
                        EventRow.flow_run_id == run_id,
                        EventRow.kind == EventKind.ATTEMPT_RESOURCE.value,
                    )
                )
            )
        )
    finally:
        after.close()
    numbers = [int(m[1:]) for m in stored]
    assert len(numbers) == len(set(numbers)), "a use case was stored twice"
    missing = set(acked) - set(numbers)
    assert not missing, f"{len(missing)} acknowledged use cases lost: {sorted(missing)[:10]}"
