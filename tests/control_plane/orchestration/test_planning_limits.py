"""``plan`` with attempts that take concurrency limits: asked of ``admit`` only once an agent
could take them, left out without it, and never charging attempts that take none."""

from __future__ import annotations

from control_plane.orchestration.matching import AgentSlot
from control_plane.orchestration.planning import ReadyAttempt, plan
from meridian.core.selectors import parse_selector

ANY = parse_selector("")
SLOT = AgentSlot("a1", "a1", "env", {}, frozenset({"process"}), 2, 0)


def attempt(attempt_id: str, *limits: str, selector: str = "") -> ReadyAttempt:
    return ReadyAttempt(attempt_id, parse_selector(selector), "process", limits=limits)


def test_attempts_without_limits_never_ask() -> None:
    asked: list[str] = []

    def admit(a: ReadyAttempt) -> bool:
        asked.append(a.attempt_id)
        return False

    planned = plan([attempt("x"), attempt("y")], [SLOT], admit=admit)
    assert [p.attempt_id for p in planned] == ["x", "y"] and asked == []


def test_a_refused_attempt_takes_no_agent_slot() -> None:
    planned = plan(
        [attempt("x", "warehouse"), attempt("y"), attempt("z")],
        [SLOT],
        admit=lambda a: False,
    )
    assert [p.attempt_id for p in planned] == ["y", "z"]


def test_admit_is_asked_only_when_an_agent_could_take_the_attempt() -> None:
    asked: list[str] = []

    def admit(a: ReadyAttempt) -> bool:
        asked.append(a.attempt_id)
        return True

    ready = [attempt("x", "w", selector="cloud=gcp"), attempt("y", "w"), attempt("z", "w")]
    planned = plan(ready, [SLOT], admit=admit)
    assert [p.attempt_id for p in planned] == ["y", "z"] and asked == ["y", "z"]


def test_without_admit_attempts_taking_limits_are_left_out() -> None:
    assert [p.attempt_id for p in plan([attempt("x", "w"), attempt("y")], [SLOT])] == ["y"]
