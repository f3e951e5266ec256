"""Flows of tests/integration/test_hosted_runners.py: a few sequential steps on the worker
agent; the third waits until the test creates ``work/go`` (so the runner can be lost
mid-flow). Every start of a step and of the body is recorded in ``work``."""

from __future__ import annotations

import os
import time
from pathlib import Path

from meridian import flow, step


@step(target="role=worker")
def stage(i: int, work: str) -> int:
    with open(Path(work) / f"stage-{i}.starts", "a") as f:
        f.write(os.environ.get("MERIDIAN_ATTEMPT_ID", "") + "\n")
    if i == 3:
        deadline = time.monotonic() + 300
        while not (Path(work) / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    return i * 10


@flow
def hosted_stages(work: str, n: int = 4) -> int:
    with open(Path(work) / "body.starts", "a") as f:
        f.write(f"{os.getpid()}\n")
    total = 0
    for i in range(1, n + 1):
        total += stage(i, work)
    return total


@step(target="role=worker")
def needs_fix(work: str) -> str:
    if not (Path(work) / "fixed").exists():
        raise RuntimeError("the input is not fixed yet")
    return "fixed"


@flow
def fix_then_resume(work: str) -> str:
    """Fails until ``work/fixed`` exists; a resume after the fix reuses ``stage#1``."""
    with open(Path(work) / "body.starts", "a") as f:
        f.write(f"{os.environ.get('MERIDIAN_FLOWEXEC_RUN_ID', 'here')}\n")
    stage(1, work)
    return needs_fix(work)
