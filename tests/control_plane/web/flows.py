"""A two-environment flow for the telemetry tests: one step on AWS, one on GCP that fails
once (a marker file under ``work``) and recovers on its retry."""

from __future__ import annotations

from pathlib import Path

from meridian import flow, step


@step(target="cloud=aws")
def fetch(n: int) -> int:
    return n + 1


@step(target="cloud=gcp", retries=2, retry_delay=0.1)
def crunch(work: str, n: int) -> int:
    marker = Path(work) / "crunch.failed-once"
    if not marker.exists():
        marker.write_text("failed once")
        raise ConnectionError("transient blip")
    return n * 10


@flow
def two_clouds(work: str) -> int:
    return crunch(work, fetch(1))


@step(target="cloud=azure", schedule_timeout=120)
def nowhere() -> int:
    return 0


@flow
def stranded() -> int:
    """A step no agent of the estate matches: it waits (``attempt.waiting``) until cancelled."""
    return nowhere()
