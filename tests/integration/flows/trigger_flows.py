"""Flows of tests/integration/test_triggers.py: bodies without steps, so a hosted runner alone
completes them."""

from __future__ import annotations

from meridian import flow


@flow
def tick(n: int = 0) -> int:
    return n


@flow
def flaky(day: str = "") -> int:
    raise RuntimeError(f"no data for {day!r}")


@flow
def alert(upstream_run: str) -> str:
    return upstream_run


@flow
def ingest(source: str = "", n: int = 0) -> dict[str, object]:
    return {"source": source, "n": n}
