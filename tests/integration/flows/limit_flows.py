"""Flows of tests/integration/test_limits.py: six steps that share the global concurrency
limit ``warehouse``, each taking a while so that holders overlap."""

from __future__ import annotations

import time

from meridian import flow, step, wait


@step(concurrency="warehouse", retries=1)  # a lost attempt runs again
def load(i: int, seconds: float) -> int:
    time.sleep(seconds)
    return i


@flow
def limited(n: int = 6, seconds: float = 1.5) -> list:
    return wait(load.map(range(n), seconds=seconds))
