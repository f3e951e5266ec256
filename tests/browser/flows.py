"""A flow for the console's live-log test: one step that prints a numbered line, again and
again, until a stop file appears under ``work`` (bounded, so a lost test cannot leave it)."""

from __future__ import annotations

import time
from pathlib import Path

from meridian import flow, step


@step(target="cloud=aws")
def chatty(work: str) -> int:
    stop = Path(work) / "stop"
    n = 0
    while not stop.exists() and n < 3000:
        print(f"tick {n}", flush=True)
        n += 1
        time.sleep(0.1)
    return n


@flow
def chatty_flow(work: str) -> int:
    return chatty(work)
