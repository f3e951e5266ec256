"""``meridian.core.kinds``: event kinds for state changes, verdicts and approval decisions."""

from __future__ import annotations

import pytest

from meridian.core.kinds import ApprovalState, EventKind, Verdict
from meridian.core.states import AttemptState, RunState, StepState

MACHINES = [(RunState, "run"), (StepState, "step"), (AttemptState, "attempt")]


@pytest.mark.parametrize(
    ("state", "prefix"),
    [(state, prefix) for machine, prefix in MACHINES for state in machine],
    ids=lambda v: f"{type(v).__name__}.{v.name}" if hasattr(v, "name") else str(v),
)
def test_entered_names_the_state_of_its_own_machine(
    state: RunState | StepState | AttemptState, prefix: str
) -> None:
    kind = EventKind.entered(state)
    assert isinstance(kind, EventKind)
    assert kind.value == f"{prefix}.{state.value.lower()}"


@pytest.mark.parametrize("value", ["PENDING", "RUNNING", "FAILED", "CANCELLED"])
def test_shared_state_values_give_one_kind_per_machine(value: str) -> None:
    # The enums share these values, and equal StrEnum members are equal dict keys: the kind
    # must still follow the machine, not whichever enum was registered last.
    kinds = {
        machine.__name__: EventKind.entered(machine(value))
        for machine, _ in MACHINES
        if value in machine._value2member_map_
    }
    assert len(kinds) >= 2
    assert len(set(kinds.values())) == len(kinds)


def test_running_in_each_machine() -> None:
    assert EventKind.entered(RunState.RUNNING) is EventKind.RUN_RUNNING
    assert EventKind.entered(StepState.RUNNING) is EventKind.STEP_RUNNING
    assert EventKind.entered(AttemptState.RUNNING) is EventKind.ATTEMPT_RUNNING


def test_verdict_past_tense_and_event() -> None:
    assert Verdict.REJECT.past_tense == "rejected"
    assert Verdict.IGNORE.past_tense == "ignored"
    assert EventKind.verdict(Verdict.REJECT) is EventKind.REPORT_REJECTED
    assert EventKind.verdict(Verdict.IGNORE) is EventKind.REPORT_IGNORED


def test_every_approval_decision_has_an_event() -> None:
    decided = [s for s in ApprovalState if s is not ApprovalState.PENDING]
    assert {EventKind.decided(s).value for s in decided} == {f"approval.{s.value}" for s in decided}
