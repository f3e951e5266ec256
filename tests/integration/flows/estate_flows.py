"""Flows the integration tests run on a real estate. Side effects go to files under ``work``
(a flow parameter) so tests can observe them from outside the step processes."""

from __future__ import annotations

import os
import time
from pathlib import Path

from meridian import Permanent, StepFailed, flow, step


@step(target="cloud=aws")
def on_aws(tag: str) -> dict:
    return {"tag": tag, "pid": os.getpid()}


@step(target="cloud=gcp,region in (europe-west1)")
def on_gcp(n: int) -> int:
    return n * n


@step(target="site=dc1")
def on_prem(values: list) -> int:
    return sum(values)


@flow
def fan_out(n: int = 3) -> dict:
    aws = on_aws.submit("first")
    squares = [f.result() for f in on_gcp.map(range(n))]
    total = on_prem(squares)
    return {"aws": aws.result()["tag"], "squares": squares, "total": total}


@step(target="site=dc1", retries=2, retry_delay=0.1)
def flaky(work: str) -> str:
    marker = Path(work) / "flaky.marker"
    with open(Path(work) / "flaky.calls", "a") as calls:
        calls.write("x")
    if not marker.exists():
        marker.write_text("failed once")
        raise ConnectionError("transient network blip")
    return "ok"


@flow
def recovers(work: str) -> str:
    return flaky(work)


@step(target="cloud=aws", retries=3, retry_delay=0.1)
def rejects(value: int) -> int:
    raise Permanent(f"value {value} is not acceptable")


@flow
def fails_permanently() -> int:
    return rejects(7)


@flow
def compensates() -> str:
    try:
        rejects(1)
    except StepFailed as exc:
        return f"caught {exc.error_type}"
    return "not reached"


@step(target="cloud=gcp", timeout=1.0, retries=1, retry_delay=0.1)
def hangs(work: str) -> None:
    with open(Path(work) / "hang.pids", "a") as pids:
        pids.write(f"{os.getpid()}\n")
    time.sleep(120)


@flow
def times_out(work: str) -> None:
    hangs(work)


@step(target="site=late", schedule_timeout=60)
def on_late_site() -> str:
    return "late but done"


@flow
def waits_for_late_agent() -> str:
    return on_late_site()


@step(target="cloud=azure", schedule_timeout=1.0)
def on_azure() -> str:
    return "never"


@flow
def impossible_target() -> str:
    return on_azure()


@step(target="cloud=aws", options={"cwd": 3, "colour": "blue"})
def misconfigured() -> str:
    return "never runs"


@flow
def bad_options() -> str:
    return misconfigured()


@step(target="cloud=aws")
def traced() -> str:
    import os

    return os.environ.get("TRACEPARENT", "")


@flow
def trace_context() -> str:
    return traced()
