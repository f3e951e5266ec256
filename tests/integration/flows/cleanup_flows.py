"""Flows for the clean-up tests: a step whose result is too large to travel inline, so it
stays in the agent's result store and only its reference reaches the control plane."""

from __future__ import annotations

from meridian import approve, flow, step


@step(target="site=dc1")
def big() -> str:
    return "x" * (300 * 1024)  # over the 256 KiB inline threshold


@flow
def big_result() -> str:
    big()
    return "stored"


@flow
def waiting() -> str:
    approve("go", message="Go on?")
    return "went"
