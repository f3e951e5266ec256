"""Flows of tests/integration/test_run_deployment.py: a parent body that runs a deployment
of ``double`` (or of ``slow``, which waits until the test creates ``work/go``) as its child."""

from __future__ import annotations

import time
from pathlib import Path

from meridian import flow, run_deployment, step


@step(target="role=worker")
def twice(x: int) -> int:
    return 2 * x


@step(target="role=worker")
def wait_for_go(work: str) -> int:
    deadline = time.monotonic() + 300
    while not (Path(work) / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return 1


@flow
def double(x: int) -> int:
    return twice(x)


@flow
def slow(work: str) -> int:
    return wait_for_go(work)


@flow
def parent(x: int) -> int:
    return run_deployment("double-it", {"x": x}) + 1


@flow
def parent_of_slow(work: str) -> int:
    return int(run_deployment("slow-one", {"work": work}, timeout=600))
