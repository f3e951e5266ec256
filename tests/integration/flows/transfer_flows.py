"""Flows of the result-transfer tests: a large result produced in one environment and read in
another, so it crosses through the control plane's relay."""

from __future__ import annotations

import hashlib

from meridian import flow, step


def payload(seed: str, size: int) -> str:
    """``size`` characters that depend on ``seed`` (a JSON string of that many bytes)."""
    block = hashlib.sha256(seed.encode()).hexdigest()
    return (block * (size // len(block) + 1))[:size]


@step(target="cloud=aws")
def produce(seed: str, size: int) -> str:
    return payload(seed, size)


@step(target="cloud=gcp")
def measure(text: str) -> dict:
    return {"length": len(text), "sha256": hashlib.sha256(text.encode()).hexdigest()}


@flow
def cross(seed: str = "s", size: int = 1024) -> dict:
    return measure(produce(seed, size))
