"""The three state machines (``orchestration/machines.py``): every legal move passes, every
other move raises ``IllegalTransition``, terminal states are left only where documented."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from control_plane.orchestration.machines import (
    IllegalTransition,
    check_attempt_transition,
    check_run_transition,
    check_step_transition,
)
from meridian.core.states import TERMINAL_ATTEMPT, AttemptState, RunState, StepState

R, S, A = RunState, StepState, AttemptState

# The documented moves (docs/architecture.md, "States"), written out again on purpose: a change
# to the machines must change this table too.
RUN_MOVES: set[tuple[str, str]] = {
    (R.SCHEDULED, R.PENDING),
    (R.SCHEDULED, R.CANCELLED),
    (R.PENDING, R.RUNNING),
    (R.PENDING, R.CANCELLING),
    (R.PENDING, R.CANCELLED),
    (R.RUNNING, R.COMPLETED),
    (R.RUNNING, R.FAILED),
    (R.RUNNING, R.PAUSED),
    (R.RUNNING, R.CANCELLING),
    (R.RUNNING, R.CRASHED),
    (R.PAUSED, R.RUNNING),
    (R.PAUSED, R.CANCELLING),
    (R.PAUSED, R.CRASHED),
    (R.PAUSED, R.COMPLETED),
    (R.PAUSED, R.FAILED),
    (R.CANCELLING, R.CANCELLED),
    (R.CRASHED, R.RUNNING),  # resume
    (R.CRASHED, R.CANCELLING),
    (R.FAILED, R.RUNNING),  # resume
    (R.CANCELLED, R.RUNNING),  # resume
    (R.CRASHED, R.PENDING),  # resume that waits for a hosted runner or the flow's limits
    (R.FAILED, R.PENDING),
    (R.CANCELLED, R.PENDING),
}
STEP_MOVES: set[tuple[str, str]] = {
    (S.PENDING, S.RUNNING),
    (S.PENDING, S.FAILED),
    (S.PENDING, S.CANCELLED),
    (S.PENDING, S.CACHED),
    (S.RUNNING, S.PENDING),  # a retry is queued
    (S.RUNNING, S.COMPLETED),
    (S.RUNNING, S.FAILED),
    (S.RUNNING, S.CANCELLED),
    (S.FAILED, S.PENDING),  # run again after a resume
    (S.CANCELLED, S.PENDING),
}
ATTEMPT_MOVES: set[tuple[str, str]] = {
    (A.QUEUED, A.ASSIGNED),
    (A.QUEUED, A.FAILED),
    (A.QUEUED, A.CANCELLED),
    (A.ASSIGNED, A.RUNNING),
    (A.ASSIGNED, A.QUEUED),
    (A.ASSIGNED, A.FAILED),
    (A.ASSIGNED, A.LOST),
    (A.ASSIGNED, A.CANCELLED),
    (A.RUNNING, A.SUCCEEDED),
    (A.RUNNING, A.FAILED),
    (A.RUNNING, A.TIMED_OUT),
    (A.RUNNING, A.LOST),
    (A.RUNNING, A.CANCELLED),
}

Check = Callable[[str, str], None]
# (name in messages, check, every state, legal moves)
MACHINES: list[tuple[str, Check, list[str], set[tuple[str, str]]]] = [
    ("flow run", check_run_transition, list(RunState), RUN_MOVES),
    ("step run", check_step_transition, list(StepState), STEP_MOVES),
    ("attempt", check_attempt_transition, list(AttemptState), ATTEMPT_MOVES),
]


def all_pairs() -> list[tuple[str, Check, str, str, bool]]:
    """Every (current, target) pair of every machine, with whether it is legal."""
    return [
        (name, check, current, target, (current, target) in legal)
        for name, check, states, legal in MACHINES
        for current, target in itertools.product(states, repeat=2)
    ]


@pytest.mark.parametrize(
    ("name", "check", "current", "target"),
    [(n, c, cur, tgt) for n, c, cur, tgt, ok in all_pairs() if ok],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_legal_moves_pass(name: str, check: Check, current: str, target: str) -> None:
    check(current, target)


@pytest.mark.parametrize(
    ("name", "check", "current", "target"),
    [(n, c, cur, tgt) for n, c, cur, tgt, ok in all_pairs() if not ok],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_every_other_move_is_illegal_and_says_which(
    name: str, check: Check, current: str, target: str
) -> None:
    with pytest.raises(IllegalTransition, match=f"^{name} cannot move from {current} to {target}$"):
        check(current, target)


def test_no_state_moves_to_itself() -> None:
    """A repeated move is a bug in the caller (it would write a second, empty event)."""
    for _, check, states, _ in MACHINES:
        for state in states:
            with pytest.raises(IllegalTransition):
                check(state, state)


def test_finished_attempts_never_move_again() -> None:
    """A retry is a new attempt: an ended one is history."""
    for ended, target in itertools.product(TERMINAL_ATTEMPT, AttemptState):
        with pytest.raises(IllegalTransition):
            check_attempt_transition(ended, target)


def test_completed_runs_and_steps_are_final() -> None:
    """Only failed, cancelled or crashed runs resume; completed work is reused, never redone."""
    for run_target in RunState:
        with pytest.raises(IllegalTransition):
            check_run_transition(R.COMPLETED, run_target)
    for done, step_target in itertools.product((S.COMPLETED, S.CACHED), StepState):
        with pytest.raises(IllegalTransition):
            check_step_transition(done, step_target)


def test_plain_strings_are_checked_like_the_enums() -> None:
    """Rows loaded by older code paths hold plain strings; the check reads them as states."""
    check_attempt_transition("QUEUED", "ASSIGNED")
    with pytest.raises(IllegalTransition):
        check_attempt_transition("QUEUED", "SUCCEEDED")


def test_an_unknown_state_is_an_error_not_a_legal_move() -> None:
    with pytest.raises(ValueError):
        check_run_transition("RUNNING", "SLEEPING")
