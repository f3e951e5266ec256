"""The states of flow runs, step runs and attempts, and the groups of them that rules use.

Shared by every side: the control plane decides them, the agent and the SDK read them. The
legal moves between them are orchestration's business (``control_plane/orchestration/
machines.py``).
"""

from __future__ import annotations

from enum import StrEnum


class RunState(StrEnum):
    SCHEDULED = "SCHEDULED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    CANCELLING = "CANCELLING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    CRASHED = "CRASHED"


class StepState(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    CACHED = "CACHED"


class AttemptState(StrEnum):
    QUEUED = "QUEUED"
    ASSIGNED = "ASSIGNED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    LOST = "LOST"
    TIMED_OUT = "TIMED_OUT"
    CANCELLED = "CANCELLED"


TERMINAL_RUN = frozenset(
    {RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED, RunState.CRASHED}
)
TERMINAL_STEP = frozenset(
    {StepState.COMPLETED, StepState.FAILED, StepState.CANCELLED, StepState.CACHED}
)
TERMINAL_ATTEMPT = frozenset(
    {
        AttemptState.SUCCEEDED,
        AttemptState.FAILED,
        AttemptState.LOST,
        AttemptState.TIMED_OUT,
        AttemptState.CANCELLED,
    }
)
# Runs whose body may still be driven by a runner: their steps run, retry and are re-attached.
LIVE_RUN = frozenset({RunState.RUNNING, RunState.PAUSED, RunState.CRASHED})
# Attempts that hold one of an agent's concurrency slots.
SLOT_HOLDING = frozenset({AttemptState.ASSIGNED, AttemptState.RUNNING})
# Attempts not yet ended: a cancel must stop them, a finished run must not leave them behind.
LIVE_ATTEMPT = frozenset({AttemptState.QUEUED, *SLOT_HOLDING})
