"""The scheduler's plan (``orchestration/planning.py``) as a pure function: ready attempts and a
snapshot of agent slots in, assignments out. No store, no clock."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from control_plane.orchestration.matching import AgentSlot
from control_plane.orchestration.planning import (
    Assignment,
    ReadyAttempt,
    has_free_slot,
    plan,
)
from meridian.core.selectors import parse_selector


def slot(
    agent_id: str,
    *,
    cloud: str = "aws",
    capacity: int = 2,
    in_use: int = 0,
    providers: Sequence[str] = ("process",),
    draining: bool = False,
) -> AgentSlot:
    """An agent labelled ``cloud=<cloud>`` in environment ``<cloud>-env``."""
    return AgentSlot(
        agent_id=agent_id,
        name=agent_id,
        environment=f"{cloud}-env",
        labels={"cloud": cloud},
        providers=frozenset(providers),
        capacity=capacity,
        in_use=in_use,
        draining=draining,
    )


def ready(attempt_id: str, target: str = "", provider: str = "process") -> ReadyAttempt:
    return ReadyAttempt(attempt_id, parse_selector(target), provider)


def burst(n: int, target: str = "") -> list[ReadyAttempt]:
    return [ready(f"t{i}", target) for i in range(n)]


def per_agent(assignments: Sequence[Assignment]) -> Counter[str]:
    return Counter(a.agent_id for a in assignments)


def test_an_agent_is_never_given_more_than_its_free_slots() -> None:
    """Each assignment takes a slot from the snapshot the plan works on."""
    assignments = plan(burst(10), [slot("a", capacity=3, in_use=1), slot("b", capacity=1)])
    assert per_agent(assignments) == {"a": 2, "b": 1}


def test_a_full_agent_gets_nothing() -> None:
    assert plan(burst(3), [slot("a", capacity=2, in_use=2)]) == []


def test_the_target_selector_chooses_the_agent() -> None:
    slots = [slot("aws-1"), slot("gcp-1", cloud="gcp")]
    assignments = plan([ready("x", "cloud=gcp"), ready("y", "cloud=aws")], slots)
    assert assignments == [Assignment("x", "gcp-1"), Assignment("y", "aws-1")]


def test_the_environment_label_is_matched_too() -> None:
    slots = [slot("aws-1"), slot("gcp-1", cloud="gcp")]
    assert plan([ready("x", "environment=gcp-env")], slots) == [Assignment("x", "gcp-1")]


def test_only_agents_offering_the_provider_are_chosen() -> None:
    slots = [slot("proc"), slot("k8s", providers=("kubernetes",))]
    assignments = plan([ready("x", provider="kubernetes"), ready("y")], slots)
    assert assignments == [Assignment("x", "k8s"), Assignment("y", "proc")]


def test_attempts_nobody_can_take_are_skipped_and_the_rest_keep_their_order() -> None:
    """An unmatched attempt stays queued; it must not block the ones behind it."""
    ready_now = [
        ready("first", "cloud=aws"),
        ready("azure", "cloud=azure"),
        ready("gpu", provider="slurm"),
        ready("second", "cloud=aws"),
        ready("third", "cloud=aws"),
    ]
    assignments = plan(ready_now, [slot("a", capacity=2)])
    assert [a.attempt_id for a in assignments] == ["first", "second"]


def test_work_spreads_over_equally_free_agents() -> None:
    assignments = plan(burst(4), [slot("a"), slot("b")])
    assert per_agent(assignments) == {"a": 2, "b": 2}
    # The emptier agent goes first: a's second slot waits until b has one in use too.
    assert [a.agent_id for a in assignments] == ["a", "b", "a", "b"]


def test_the_least_loaded_agent_by_ratio_is_chosen() -> None:
    """Half full (1 of 2) is busier than a quarter full (1 of 4)."""
    slots = [slot("small", capacity=2, in_use=1), slot("big", capacity=4, in_use=1)]
    assert plan([ready("x")], slots) == [Assignment("x", "big")]


def test_the_tiebreak_rotates_among_equally_free_agents() -> None:
    """Successive passes with another tiebreak start on another agent."""
    slots = [slot("a"), slot("b"), slot("c")]
    firsts = [plan([ready("x")], slots, tiebreak=t)[0].agent_id for t in range(6)]
    assert firsts == ["a", "b", "c", "a", "b", "c"]


def test_one_pass_rotates_its_ties_too() -> None:
    """Within a pass the tiebreak advances per attempt: agents tied at the same load do
    not all fill in id order."""
    slots = [slot("a", capacity=1), slot("b", capacity=1), slot("c", capacity=1)]
    assignments = plan(burst(3), slots, tiebreak=1)
    assert per_agent(assignments) == {"a": 1, "b": 1, "c": 1}
    assert assignments[0].agent_id == "b"


def test_planning_stops_when_no_slot_is_free() -> None:
    assignments = plan(burst(100), [slot("a", capacity=1), slot("b", capacity=1)])
    assert len(assignments) == 2
    assert not has_free_slot([slot("a", capacity=1, in_use=1)])


def test_draining_agents_get_nothing() -> None:
    """A draining agent finishes what it runs but takes no new work."""
    slots = [slot("draining", capacity=8, draining=True), slot("open", capacity=1)]
    assert plan(burst(3), slots) == [Assignment("t0", "open")]
    assert plan(burst(3), [slot("draining", draining=True)]) == []
    assert not has_free_slot([slot("draining", draining=True)])


def test_the_snapshot_passed_in_is_not_changed() -> None:
    slots = [slot("a")]
    plan(burst(2), slots)
    assert slots == [slot("a")]


def test_nothing_ready_plans_nothing() -> None:
    assert plan([], [slot("a")]) == []
