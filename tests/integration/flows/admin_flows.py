"""Flows for the agent-administration tests."""

from __future__ import annotations

from meridian import flow, step


@step(target="site=edge", schedule_timeout=2.0)
def on_edge() -> str:
    return "ran"


@flow
def edge_job() -> str:
    return on_edge()
