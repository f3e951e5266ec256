"""Flows of tests/integration/test_subflows.py: a parent whose body calls a subflow."""

from __future__ import annotations

from pathlib import Path

from meridian import flow, step


@step
def double(x: int) -> int:
    return 2 * x


@flow(subflow=True)
def child(n: int) -> int:
    return double(n) + 1


@flow
def parent(n: int, work: str) -> int:
    got = child(n)
    if not (Path(work) / "go").exists():  # fails after the child completed, until told
        raise RuntimeError("parent stops after its child")
    return got * 10
