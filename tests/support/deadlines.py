"""The one deadline every test waits with, scaled for a loaded machine.

Tests that wait for something to happen (a process to exit, a run to reach a state, a line
to appear) all use ``DEADLINE_S``. It is deliberately generous: a passing test never waits
for it, so its size only matters when the machine is busy, and then a short one fails
spuriously. On a slower machine than usual set ``MERIDIAN_TEST_TIME_SCALE`` (e.g. ``3``)
and pass a matching ``--timeout`` to pytest (the per-test limit in pyproject.toml is not
scaled).

Short waits that check something does *not* happen ("not before 0.3 s", "still pending
after a moment") are not deadlines and do not use this module: making them longer only
makes the suite slower, never less flaky.
"""

from __future__ import annotations

import math
import os
import time

TIME_SCALE_ENV = "MERIDIAN_TEST_TIME_SCALE"


def _read_time_scale(raw: str | None) -> float:
    """Parse ``MERIDIAN_TEST_TIME_SCALE``; a typo must fail loudly, not silently mean 1."""
    if raw is None or not raw.strip():
        return 1.0
    try:
        scale = float(raw)
    except ValueError:
        raise ValueError(
            f"{TIME_SCALE_ENV}={raw!r} is not a number; set it to a positive factor such as 2.5"
        ) from None
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"{TIME_SCALE_ENV}={raw!r} must be a positive, finite factor")
    return scale


TIME_SCALE: float = _read_time_scale(os.environ.get(TIME_SCALE_ENV))

# How long any "wait until X happens" may take before the test fails.
DEADLINE_S: float = 60.0 * TIME_SCALE


def deadline(seconds: float | None = None) -> float:
    """The ``time.monotonic()`` value by which a wait must succeed (``DEADLINE_S`` from now)."""
    return time.monotonic() + (DEADLINE_S if seconds is None else seconds)
