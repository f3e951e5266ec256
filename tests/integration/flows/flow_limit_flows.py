"""Flows of tests/integration/test_flow_limits.py: a flow that holds the named limit ``db``
for its whole run; its one step waits until the test creates ``work/go-<tag>``."""

from __future__ import annotations

import time
from pathlib import Path

from meridian import flow, step


@step(target="role=worker")
def hold(work: str, tag: str) -> str:
    deadline = time.monotonic() + 300
    while not (Path(work) / f"go-{tag}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return tag


@flow(concurrency="db")
def guarded(work: str, tag: str) -> str:
    return hold(work, tag)
