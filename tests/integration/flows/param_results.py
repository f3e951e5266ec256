"""Flows of the stored-result parameter test: ``make`` leaves a large result at its site, and
``consume`` takes it as a parameter (``-p data=@result:RUN/produce#1``) and passes it to a step
that measures it. ``consume_any`` takes whatever its parameter is, marker or not."""

from __future__ import annotations

import hashlib

from meridian import ResultRef, flow, step


def payload(size: int) -> str:
    """``size`` deterministic characters (a JSON string of ``size + 2`` bytes)."""
    block = hashlib.sha256(b"meridian-result-params").hexdigest()
    return (block * (size // len(block) + 1))[:size]


@step(target="cloud=aws")
def produce(size: int) -> str:
    return payload(size)


@step(target="cloud=aws")
def measure(text: str) -> dict[str, object]:
    return {"length": len(text), "sha256": hashlib.sha256(text.encode()).hexdigest()}


@flow
def make(size: int = 1024) -> int:
    ref = produce(size)
    assert isinstance(ref, ResultRef), f"expected a reference, got {type(ref).__name__}"
    return ref.size


@flow
def consume(data: ResultRef) -> dict[str, object]:
    assert isinstance(data, ResultRef), f"expected a reference, got {type(data).__name__}"
    return {"ref_size": data.size, "measured": measure(data)}


@flow
def consume_any(data) -> dict[str, object]:  # type: ignore[no-untyped-def]
    return measure(data)
