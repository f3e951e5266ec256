"""Flows of tests/integration/test_map_resume.py: a fan-out whose steps record each start."""

from __future__ import annotations

import os
import time
from pathlib import Path

from meridian import flow, step, wait


@step(target="cloud=aws")
def square(i: int, work: str) -> int:
    """Records its start; the first item waits until the test creates ``work/go``."""
    with open(Path(work) / f"square-{i}.starts", "a") as f:
        f.write(os.environ.get("MERIDIAN_ATTEMPT_ID", "") + "\n")
    if i == 0:
        deadline = time.monotonic() + 300
        while not (Path(work) / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    return i * i


@flow
def resumable_map(work: str, n: int = 30) -> list:
    return wait(square.map(range(n), work=work))
