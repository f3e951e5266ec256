"""The scheduler's plan: which ready attempt goes to which agent, as a pure function.

``plan`` takes the attempts that may start now (oldest first) and a snapshot of the agents'
free slots, and returns the assignments. It never over-fills an agent: each assignment takes
one slot from the snapshot it works on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from control_plane.orchestration.matching import AgentSlot, accepts_work, choose_agent
from control_plane.orchestration.residency_check import NO_RESIDENCY, Residency
from meridian.core.selectors import Selector


@dataclass(frozen=True)
class ReadyAttempt:
    """A queued attempt whose start time has come."""

    attempt_id: str
    selector: Selector
    provider: str
    # The residency rules of its referenced inputs (none for most steps).
    residency: Residency = NO_RESIDENCY
    # Named concurrency limits it must hold a slot of before it is assigned (most: none).
    limits: tuple[str, ...] = ()
    # The result store its step names (``StepSpec.result_store``; most: "", any agent).
    result_store: str = ""


@dataclass(frozen=True)
class Assignment:
    attempt_id: str
    agent_id: str


def has_free_slot(slots: Sequence[AgentSlot]) -> bool:
    return any(accepts_work(s) for s in slots)


def plan(
    ready: Iterable[ReadyAttempt],
    slots: Sequence[AgentSlot],
    *,
    tiebreak: int = 0,
    admit: Callable[[ReadyAttempt], bool] | None = None,
) -> list[Assignment]:
    """Assign ready attempts, in order, to the eligible agent with the most spare room.

    ``tiebreak`` rotates the choice among equally free agents from pass to pass, so a burst
    of work spreads over them instead of always landing on the first. An attempt no agent
    can take now is left out (it stays queued until a slot frees or its deadline passes).
    ``ready`` is read lazily and only until the free slots are used up, and once no agent can
    take a (selector, provider, residency, result store) the later attempts asking the same
    are skipped unchecked (slots only fill up during a plan), so a long queue costs little. An
    attempt whose inputs name stored results goes only to an agent allowed to read them, one
    whose step names a result store only to an agent that advertised it.

    An attempt that takes concurrency limits is assigned only if ``admit`` says it holds
    their slots, asked once an agent could take it (so no slot is taken for work no agent
    can start); without ``admit`` such attempts are left out. Others never pay for it.
    """
    free = list(slots)
    assignments: list[Assignment] = []
    hopeless: set[tuple[Selector, str, Residency, str]] = set()
    for i, attempt in enumerate(ready):
        if not has_free_slot(free):
            break
        need = (attempt.selector, attempt.provider, attempt.residency, attempt.result_store)
        if need in hopeless:
            continue
        slot = choose_agent(
            attempt.selector,
            attempt.provider,
            free,
            tiebreak=tiebreak + i,
            residency=attempt.residency,
            result_store=attempt.result_store,
        )
        if slot is None:
            hopeless.add(need)
            continue
        if attempt.limits and (admit is None or not admit(attempt)):
            continue
        free[free.index(slot)] = dataclasses.replace(slot, in_use=slot.in_use + 1)
        assignments.append(Assignment(attempt.attempt_id, slot.agent_id))
    return assignments
