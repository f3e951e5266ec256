"""Flows for the network-cut and soak tests. Steps record each time their code starts (with
their pid and attempt id) in files under ``work`` so tests can count executions from outside."""

from __future__ import annotations

import os
import time
from pathlib import Path

from meridian import flow, step


def _mark(work: str, name: str) -> None:
    with open(Path(work) / f"{name}.starts", "a") as f:
        f.write(f"{os.getpid()} {os.environ.get('MERIDIAN_ATTEMPT_ID', '')}\n")


def _chatty_sleep(name: str, seconds: float, lines: int) -> None:
    """Print ``lines`` numbered lines spread over ``seconds``."""
    for i in range(lines):
        print(f"{name} line {i}", flush=True)
        time.sleep(seconds / lines)


# -- a cut shorter than lost_after: the attempt survives ----------------------------------


@step(target="cloud=aws", retries=2, retry_delay=0.2, lost_after=30.0)
def steady(work: str, seconds: float, lines: int) -> str:
    _mark(work, "steady")
    _chatty_sleep("steady", seconds, lines)
    return "steady done"


@flow
def survives_short_cut(work: str, seconds: float = 4.0, lines: int = 8) -> str:
    return steady(work, seconds, lines)


@step(target="cloud=aws", retries=2, retry_delay=0.2, lost_after=30.0)
def held_open(work: str, every_s: float, limit_s: float) -> int:
    """Print numbered lines until the test creates ``work/release``; returns how many."""
    _mark(work, "held_open")
    printed, deadline = 0, time.monotonic() + limit_s
    while not (Path(work) / "release").exists() and time.monotonic() < deadline:
        print(f"held_open line {printed}", flush=True)
        printed += 1
        time.sleep(every_s)
    print(f"held_open line {printed}", flush=True)
    return printed + 1


@flow
def runs_across_short_cut(work: str, every_s: float = 0.25, limit_s: float = 120.0) -> int:
    return held_open(work, every_s, limit_s)


# -- a cut longer than lost_after: the attempt is lost and retried elsewhere ---------------


@step(target="cloud=aws", retries=3, retry_delay=0.2, lost_after=3.0)
def stale_copy(work: str, first_s: float, later_s: float) -> str:
    """The first execution runs long (it is the one cut off), every later one is short."""
    _mark(work, "stale_copy")
    first = True
    try:
        os.close(os.open(Path(work) / "stale_copy.first", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        first = False
    if first:
        (Path(work) / "stale_copy.pid").write_text(str(os.getpid()))
    print(f"stale_copy {'first' if first else 'retry'} pid {os.getpid()}", flush=True)
    time.sleep(first_s if first else later_s)
    return "first" if first else "retry"


@step(target="role=direct", lost_after=30.0)
def occupy(work: str, limit_s: float) -> str:
    """Holds one slot of the direct agent until the flow body creates ``work/release``."""
    deadline = time.monotonic() + limit_s
    while not (Path(work) / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return "released"


@flow
def loses_to_long_cut(work: str, first_s: float = 120.0, later_s: float = 1.0) -> str:
    occupant = occupy.submit(work, first_s)
    try:
        return stale_copy(work, first_s, later_s)
    finally:
        (Path(work) / "release").touch()
        occupant.result()


# -- on_agent_lost="wait": the attempt outlives a long cut --------------------------------


@step(target="cloud=aws", on_agent_lost="wait", lost_after=2.0)
def patient(work: str, seconds: float, lines: int) -> str:
    _mark(work, "patient")
    _chatty_sleep("patient", seconds, lines)
    return "patient done"


@flow
def waits_out_long_cut(work: str, seconds: float = 8.0, lines: int = 4) -> str:
    return patient(work, seconds, lines)


# -- soak: many small steps -------------------------------------------------------------


@step(retries=8, retry_delay=0.2, retry_backoff=1.5, lost_after=4.0)
def tick(i: int, work: str, lane: str, pause_s: float) -> int:
    line = f"{lane} {os.environ.get('MERIDIAN_STEP_KEY', '')} {os.getpid()}\n"
    fd = os.open(Path(work) / f"{lane}.starts", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one small O_APPEND write: lines never interleave
    finally:
        os.close(fd)
    time.sleep(pause_s)
    return i * i


@flow
def soak_batch(work: str, lane: str, n: int = 40, pause_s: float = 0.05) -> int:
    futures = tick.map(range(n), work=work, lane=lane, pause_s=pause_s)
    return sum(f.result() for f in futures)
