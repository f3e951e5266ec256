"""A flow whose one step outlives several certificate rotations of the agent running it."""

from __future__ import annotations

import time

from meridian import flow, step


@step(target="site=rotating", retries=0)
def long_step(seconds: float) -> str:
    time.sleep(seconds)
    return "finished"


@flow
def outlives_certificates(seconds: float = 24.0) -> str:
    return long_step(seconds)
