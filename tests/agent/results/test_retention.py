"""Retention at the site (agent.results.retention): expired objects under runs/ and stale
unfinished uploads go, everything else stays; on a directory and on S3 (moto)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent.results import FilesystemConfig, FilesystemStore, ResultStore, S3Store
from agent.results.retention import keep_retention, sweep_store
from tests.agent.results.conftest import s3_config
from tests.support.polling import apoll_until

DAY = 24 * 3600


def put(store: ResultStore, key: str, data: bytes = b"{}") -> None:
    store.put(key, [data], len(data), hashlib.sha256(data).hexdigest())


def age(path: Path, days: float) -> None:
    then = time.time() - days * DAY
    os.utime(path, (then, then))


def test_expired_objects_and_stale_uploads_are_removed(tmp_path: Path) -> None:
    root = tmp_path / "root"
    store = FilesystemStore("scratch", FilesystemConfig(root))
    put(store, "runs/old/s/a/result", b"[1, 2]")
    put(store, "runs/new/s/a/result")
    put(store, "keep/old")  # not a run's object: retention leaves it alone
    age(root / "runs/old/s/a/result", 20)
    age(root / "keep/old", 20)
    (root / ".incoming" / "dead.part").write_bytes(b"half")
    age(root / ".incoming" / "dead.part", 2)
    (root / ".incoming" / "live.part").write_bytes(b"in flight")

    result = sweep_store(store, retention_days=14)

    assert (result.deleted, result.deleted_bytes, result.aborted, result.errors) == (1, 6, 1, 0)
    assert not (root / "runs/old/s/a/result").exists()
    assert (root / "runs/new/s/a/result").exists() and (root / "keep/old").exists()
    assert sorted(p.name for p in (root / ".incoming").iterdir()) == ["live.part"]


def test_a_sweep_deletes_a_bounded_number_and_the_next_goes_on(tmp_path: Path) -> None:
    root = tmp_path / "root"
    store = FilesystemStore("scratch", FilesystemConfig(root))
    for n in range(5):
        put(store, f"runs/r{n}/s/a/result")
        age(root / f"runs/r{n}/s/a/result", 20)
    assert sweep_store(store, 14, max_deletes=3).deleted == 3
    assert sweep_store(store, 14, max_deletes=3).deleted == 2
    assert list(store.list()) == []


def test_without_retention_days_objects_stay_and_stale_uploads_still_go(tmp_path: Path) -> None:
    root = tmp_path / "root"
    store = FilesystemStore("scratch", FilesystemConfig(root))
    put(store, "runs/old/s/a/result")
    age(root / "runs/old/s/a/result", 400)
    (root / ".incoming" / "dead.part").write_bytes(b"half")
    age(root / ".incoming" / "dead.part", 2)
    result = sweep_store(store, retention_days=None)
    assert (result.deleted, result.aborted) == (0, 1)
    assert (root / "runs/old/s/a/result").exists()


def test_an_s3_stores_expired_objects_are_deleted(s3_endpoint: str) -> None:
    store = S3Store("s3", s3_config(s3_endpoint, f"t-{os.urandom(4).hex()}/"))
    put(store, "runs/r/s/a/result")
    put(store, "other/object")
    assert sweep_store(store, retention_days=30).deleted == 0
    later = datetime.now(UTC) + timedelta(days=31)
    assert sweep_store(store, retention_days=30, now=later).deleted == 1
    assert [info.key for info in store.list()] == ["other/object"]


def test_the_background_task_sweeps_until_cancelled(tmp_path: Path) -> None:
    root = tmp_path / "root"
    store = FilesystemStore("scratch", FilesystemConfig(root))

    async def scenario() -> None:
        task = asyncio.ensure_future(keep_retention(store, 1, interval_s=0.05))
        try:
            for n in range(2):  # an object that expires after the first sweep goes too
                put(store, f"runs/r{n}/s/a/result")
                age(root / f"runs/r{n}/s/a/result", 3)
                gone = root / f"runs/r{n}/s/a/result"
                await apoll_until(lambda gone=gone: not gone.exists(), message=str(gone))
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(scenario())
