"""Flows of the presigned-URL transfer tests: a result produced on an object store (S3 on
moto, or Azure Blob on Azurite) in one environment and read in another."""

from __future__ import annotations

import hashlib

from meridian import flow, step


def payload(seed: str, size: int) -> str:
    """``size`` characters that depend on ``seed`` (as in ``transfer_flows``)."""
    block = hashlib.sha256(seed.encode()).hexdigest()
    return (block * (size // len(block) + 1))[:size]


@step(target="cloud=aws")
def produce_s3(seed: str, size: int) -> str:
    return payload(seed, size)


@step(target="cloud=azure")
def produce_azure(seed: str, size: int) -> str:
    return payload(seed, size)


@step(target="cloud=gcp")
def measure(text: str) -> dict:
    return {"length": len(text), "sha256": hashlib.sha256(text.encode()).hexdigest()}


@flow
def from_s3(seed: str = "s", size: int = 1024) -> dict:
    return measure(produce_s3(seed, size))


@flow
def from_azure(seed: str = "s", size: int = 1024) -> dict:
    return measure(produce_azure(seed, size))
