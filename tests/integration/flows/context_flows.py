"""Flows for tests/integration/test_run_context.py: meridian.context() and get_logger()."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import meridian
from meridian import flow, step


@step(target="site=dc1", retries=1, retry_delay=0.1)
def where_am_i(work: str) -> dict:
    log = meridian.get_logger("ctx")
    ctx = meridian.context()
    log.debug("debug record of attempt %s", ctx.attempt_number)
    log.info("info record of attempt %s", ctx.attempt_number)
    log.warning("warning record of attempt %s", ctx.attempt_number)
    log.error("error record of attempt %s", ctx.attempt_number)
    print(f"plain print of attempt {ctx.attempt_number}", flush=True)
    marker = Path(work) / "where_am_i.failed"
    if not marker.exists():  # the first attempt fails: the context of the retry is checked
        marker.write_text("once")
        raise ConnectionError("first attempt fails on purpose")
    # What a subprocess of the step (or a non-Python tool) learns from its environment.
    seen = subprocess.run(
        [sys.executable, "-c", "import os; print(os.environ['MERIDIAN_FLOW_RUN_ID'], "
         "os.environ['MERIDIAN_STEP_KEY'], os.environ['MERIDIAN_ATTEMPT_NUMBER'])"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return {**ctx.to_dict(), "subprocess_saw": seen.stdout.split()}


@flow
def context_flow(work: str) -> dict:
    ctx = meridian.context()
    return {"flow": ctx.to_dict(), "step": where_am_i(work)}
