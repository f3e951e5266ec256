"""Invariants every fault-injection test checks on the run's recorded history."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from meridian import models

TERMINAL_ATTEMPT_EVENTS = {
    "attempt.succeeded",
    "attempt.failed",
    "attempt.lost",
    "attempt.timed_out",
    "attempt.cancelled",
}
TERMINAL_STEPS = {"COMPLETED", "FAILED", "CANCELLED", "CACHED"}


def check_history(detail: models.RunDetail) -> None:
    """Nothing recorded twice, nothing left dangling."""
    ended = Counter(e.attempt_id for e in detail.events if e.kind in TERMINAL_ATTEMPT_EVENTS)
    assert all(n == 1 for n in ended.values()), f"an attempt ended twice: {ended}"
    completed = Counter(e.step_key for e in detail.events if e.kind == "step.completed")
    assert all(n == 1 for n in completed.values()), f"a result was recorded twice: {completed}"
    for step in detail.steps:
        assert step.state in TERMINAL_STEPS, f"{step.key} is still {step.state}"
        succeeded = [a for a in step.attempts if a.state == "SUCCEEDED"]
        assert len(succeeded) == (1 if step.state == "COMPLETED" else 0), step
        for attempt in step.attempts:
            assert attempt.state not in ("QUEUED", "ASSIGNED", "RUNNING"), attempt


def starts(work: Path, name: str) -> list[str]:
    """One line per time a step's code started (written by the step itself)."""
    path = work / f"{name}.starts"
    return path.read_text().splitlines() if path.exists() else []


def running_attempt(detail: models.RunDetail, key: str) -> models.AttemptDetail | None:
    for step in detail.steps:
        if step.key == key:
            for attempt in step.attempts:
                if attempt.state == "RUNNING":
                    return attempt
    return None
