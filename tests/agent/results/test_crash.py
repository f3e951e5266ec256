"""A writer SIGKILLed mid-upload leaves no torn object, and a retried put succeeds.

The writer is a real subprocess that builds its store from a ``[result_stores]`` table
(``parse_result_stores``) and streams 24 MiB; it says when half is sent, and is killed there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.results import ResultNotFound, build_store, parse_result_stores
from tests.agent.results import conftest
from tests.agent.results.patterns import MiB, digest, pattern
from tests.support.deadlines import DEADLINE_S

pytestmark = [pytest.mark.emulator, pytest.mark.timeout(300)]

SIZE = 24 * MiB
WRITER = """
import hashlib, json, sys, time
from agent.results import build_store, parse_result_stores
from tests.agent.results.patterns import pattern

table, size, sha = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
store = build_store(parse_result_stores(table).stores["results"])

def chunks():
    for i, chunk in enumerate(pattern(size)):
        if i == size // len(chunk) // 2:
            print("HALF", flush=True)
            time.sleep(60)  # the test kills us here, mid-upload
        yield chunk

store.put("crash/result", chunks(), size, sha)
print("DONE", flush=True)
"""


def _table(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    prefix = f"crash-{os.getpid()}-{tmp_path.name}/"
    if backend == "filesystem":
        return {"type": "filesystem", "root": str(tmp_path / "root")}
    if backend == "s3":
        config = conftest.s3_config(request.getfixturevalue("s3_endpoint"), prefix)
    elif backend == "gcs":
        config = conftest.gcs_config(request.getfixturevalue("gcs_endpoint"), prefix)
    else:
        config = conftest.azure_config(request.getfixturevalue("azurite_connection"), prefix)
    options = {k: v for k, v in vars(config).items() if v is not None}
    return {"type": backend, **options}


def test_sigkill_mid_upload_leaves_no_torn_object(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    table = {"results": _table(backend, request, tmp_path)}
    sha = digest(SIZE)
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, json.dumps(table), str(SIZE), sha],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[3],
        text=True,
    )
    try:
        assert writer.stdout is not None
        line = writer.stdout.readline()  # blocks until the writer is half-way (or dies)
        assert line.strip() == "HALF", writer.stderr.read() if writer.stderr else line
        os.kill(writer.pid, signal.SIGKILL)
        assert writer.wait(DEADLINE_S) == -signal.SIGKILL
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()

    store = build_store(parse_result_stores(table).stores["results"])
    with pytest.raises(ResultNotFound):
        store.stat("crash/result")
    assert list(store.list("crash/")) == []
    if backend in ("filesystem", "s3"):
        # The unfinished upload is there to clean up (a .part file, a multipart upload).
        assert store.abort_incomplete(datetime.now(UTC) + timedelta(seconds=5)) >= 1

    location = store.put("crash/result", pattern(SIZE), SIZE, sha)
    with store.open(location, 4 * MiB) as reader:
        assert sum(len(chunk) for chunk in reader) == SIZE  # digest checked on the way
    assert store.stat("crash/result").size == SIZE
