"""Flows with a human approval between two steps. Each step appends a line to a file under
``work`` when its code starts, so tests can count executions from outside."""

from __future__ import annotations

from pathlib import Path

from meridian import approve, flow, step


def _mark(work: str, name: str) -> None:
    with open(Path(work) / f"{name}.starts", "a") as f:
        f.write("started\n")


@step(target="cloud=aws")
def build(work: str) -> str:
    _mark(work, "build")
    return "build-42"


@step(target="cloud=aws")
def release(work: str, artifact: str) -> str:
    _mark(work, "release")
    return f"released {artifact}"


@flow
def gated_release(work: str, timeout: float = 0.0) -> dict:
    artifact = build(work)
    decision = approve(
        "deploy", message=f"Release {artifact} to production?", timeout=timeout or None
    )
    return {
        "release": release(work, artifact),
        "approved_by": decision.approved_by,
        "reason": decision.reason,
    }
