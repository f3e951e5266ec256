"""The three state machines (docs/architecture.md, "States") as data, plus the checks on them.

Pure: no I/O. A check runs before every write of a state, so an illegal jump is a bug report,
not silent corruption.
"""

from __future__ import annotations

from meridian.core.states import AttemptState, RunState, StepState

_RUN_MOVES: dict[RunState, frozenset[RunState]] = {
    RunState.SCHEDULED: frozenset({RunState.PENDING, RunState.CANCELLED}),
    RunState.PENDING: frozenset({RunState.RUNNING, RunState.CANCELLING, RunState.CANCELLED}),
    RunState.RUNNING: frozenset(
        {
            RunState.COMPLETED,
            RunState.FAILED,
            RunState.PAUSED,
            RunState.CANCELLING,
            RunState.CRASHED,
        }
    ),
    # PAUSED: the flow body waits for an approval (usecases/approvals.py). Its runner
    # may still die (CRASHED) or end the body anyway (e.g. interrupted: FAILED).
    RunState.PAUSED: frozenset(
        {
            RunState.RUNNING,
            RunState.CANCELLING,
            RunState.CRASHED,
            RunState.COMPLETED,
            RunState.FAILED,
        }
    ),
    RunState.CANCELLING: frozenset({RunState.CANCELLED}),
    # Resume: continue from the point of failure, at once (RUNNING) or once a hosted runner
    # or the flow's concurrency limits let it start (PENDING).
    RunState.CRASHED: frozenset({RunState.RUNNING, RunState.PENDING, RunState.CANCELLING}),
    RunState.FAILED: frozenset({RunState.RUNNING, RunState.PENDING}),
    RunState.CANCELLED: frozenset({RunState.RUNNING, RunState.PENDING}),
}
_STEP_MOVES: dict[StepState, frozenset[StepState]] = {
    StepState.PENDING: frozenset(
        {StepState.RUNNING, StepState.FAILED, StepState.CANCELLED, StepState.CACHED}
    ),
    # RUNNING -> PENDING: an attempt failed and a retry is queued.
    StepState.RUNNING: frozenset(
        {StepState.PENDING, StepState.COMPLETED, StepState.FAILED, StepState.CANCELLED}
    ),
    # A resumed run runs its failed or cancelled steps again when the body reaches them.
    StepState.FAILED: frozenset({StepState.PENDING}),
    StepState.CANCELLED: frozenset({StepState.PENDING}),
}
_ATTEMPT_MOVES: dict[AttemptState, frozenset[AttemptState]] = {
    AttemptState.QUEUED: frozenset(
        {AttemptState.ASSIGNED, AttemptState.FAILED, AttemptState.CANCELLED}
    ),
    AttemptState.ASSIGNED: frozenset(
        {
            AttemptState.RUNNING,
            AttemptState.QUEUED,  # the agent refused or vanished before starting
            AttemptState.FAILED,
            AttemptState.LOST,
            AttemptState.CANCELLED,
        }
    ),
    AttemptState.RUNNING: frozenset(
        {
            AttemptState.SUCCEEDED,
            AttemptState.FAILED,
            AttemptState.TIMED_OUT,
            AttemptState.LOST,
            AttemptState.CANCELLED,
        }
    ),
}


class IllegalTransition(Exception):
    """A state change the state machine does not allow (a bug, never user input)."""


def _check(kind: str, moves: dict, current: str, target: str) -> None:
    if target not in moves.get(current, frozenset()):
        raise IllegalTransition(f"{kind} cannot move from {current} to {target}")


def check_run_transition(current: str, target: str) -> None:
    _check("flow run", _RUN_MOVES, RunState(current), RunState(target))


def check_step_transition(current: str, target: str) -> None:
    _check("step run", _STEP_MOVES, StepState(current), StepState(target))


def attempt_may_move(current: AttemptState, target: AttemptState) -> bool:
    return target in _ATTEMPT_MOVES.get(current, frozenset())


def check_attempt_transition(current: str, target: str) -> None:
    _check("attempt", _ATTEMPT_MOVES, AttemptState(current), AttemptState(target))
