"""A local run of a ``@flow(concurrency=...)`` waits, PENDING, until it holds its limits.

``CreateRun`` asks the control plane for a slot of each named limit; when one is taken, the run
stays PENDING (the control plane starts it, RUNNING, as soon as it holds them all) and the
runner waits here before running the body, printing why while it waits. Polling is bounded:
at most every ``MAX_POLL_S``. Interrupted (Ctrl-C), the waiting run is cancelled, so it does
not keep its place in the limit's line.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

FIRST_POLL_S = 0.2
MAX_POLL_S = 2.0


def wait_until_started(client: Any, run_id: str, *, out: TextIO | None = None) -> str:
    """Block while run ``run_id`` is PENDING; returns the state it left PENDING for."""
    out = out if out is not None else sys.stderr
    shown = ""
    delay = FIRST_POLL_S
    try:
        while True:
            detail = client.get_run(run_id)
            if detail.state != "PENDING":
                if shown:
                    print(f"Run {run_id} holds its concurrency limits: starting", file=out)
                return str(detail.state)
            why = detail.waiting_for or "waiting for its concurrency limits"
            if why != shown:
                print(f"Run {run_id} is PENDING, {why}", file=out, flush=True)
                shown = why
            time.sleep(delay)
            delay = min(delay * 1.5, MAX_POLL_S)
    except KeyboardInterrupt:
        cancel = getattr(client, "cancel_run", None)
        if cancel is not None:
            cancel(run_id, "interrupted while waiting for its concurrency limits")
        raise
