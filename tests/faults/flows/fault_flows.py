"""Flows for fault-injection tests. Every step appends a line to a file under ``work`` each
time its code starts, so tests can count executions from outside."""

from __future__ import annotations

import os
import time
from pathlib import Path

from meridian import StepCancelled, flow, step


def _mark(work: str, name: str, extra: str = "") -> None:
    with open(Path(work) / f"{name}.starts", "a") as f:
        f.write(f"{os.getpid()} {os.environ.get('MERIDIAN_ATTEMPT_ID', '')} {extra}\n")


@step(target="cloud=aws", retries=3, retry_delay=0.2, lost_after=2.0)
def slow_on_aws(work: str, seconds: float) -> str:
    _mark(work, "slow_on_aws")
    time.sleep(seconds)
    return "done"


@flow
def one_slow_step(work: str, seconds: float = 4.0) -> str:
    return slow_on_aws(work, seconds)


@step(target="cloud=aws", retries=3, retry_delay=0.2, lost_after=15.0)
def reattachable(work: str, seconds: float) -> int:
    _mark(work, "reattachable")
    time.sleep(seconds)
    return 42


@flow
def survives_agent_restart(work: str, seconds: float = 5.0) -> int:
    return reattachable(work, seconds)


@step(retries=2, retry_delay=0.2)
def quick(work: str, i: int) -> int:
    _mark(work, f"quick-{i}")
    time.sleep(0.3)
    return i * 10


@flow
def many_quick_steps(work: str, n: int = 12) -> int:
    first = [quick(work, i) for i in range(n // 2)]  # one after another
    rest = [quick.submit(work, i) for i in range(n // 2, n)]  # in parallel
    return sum(first) + sum(f.result() for f in rest)


@flow
def quick_burst(work: str, n: int = 48) -> int:
    """All at once: the steps' results reach the control plane as a burst of reports."""
    return sum(f.result() for f in [quick.submit(work, i) for i in range(n)])


@step(target="cloud=aws", lost_after=60.0)
def resumable(work: str, i: int) -> int:
    _mark(work, f"resumable-{i}")
    time.sleep(1.0)
    return i


@flow
def resumable_chain(work: str, n: int = 4) -> list:
    return [resumable(work, i) for i in range(n)]


@step(target="cloud=aws")
def forever_on_aws(work: str) -> None:
    with open(Path(work) / "pids", "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(300)


@step(target="cloud=gcp")
def forever_on_gcp(work: str) -> None:
    with open(Path(work) / "pids", "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(300)


@flow
def runs_until_cancelled(work: str) -> str:
    futures = [forever_on_aws.submit(work), forever_on_gcp.submit(work)]
    try:
        for f in futures:
            f.result()
    except StepCancelled:
        (Path(work) / "compensated").write_text("yes")
        return "compensated"
    return "not cancelled"
