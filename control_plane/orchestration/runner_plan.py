"""Which agent runs which hosted flow body (decision 0018): a pure plan over runner slots.

Runs that want a runner are taken oldest first; each goes to a connected agent whose labels
(plus ``environment=``) satisfy the run's ``runner_target``, that is neither draining nor
degraded and has a free runner slot. An agent other than the one that lost the run is
preferred when one matches; among the rest, the least loaded, then by name (stable). A plan
never gives an agent more bodies than it has runner slots.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from meridian.core.selectors import ENVIRONMENT_LABEL, Selector


@dataclass(frozen=True)
class RunnerHost:
    """A connected agent as the runner planner sees it."""

    agent_id: str
    name: str
    environment: str
    labels: Mapping[str, str]
    runner_slots: int
    held: int  # bodies it runs now (from the store)
    draining: bool = False
    degraded: bool = False

    def matches(self, selector: Selector) -> bool:
        # As for steps (orchestration.matching): environment= always comes from the agent.
        return selector.matches({**self.labels, ENVIRONMENT_LABEL: self.environment})


@dataclass(frozen=True)
class RunnerDemand:
    flow_run_id: str
    selector: Selector
    avoid_agent: str | None = None  # the agent that lost this run, if any


@dataclass(frozen=True)
class RunnerPlacement:
    flow_run_id: str
    agent_id: str


def plan_runners(
    demands: Iterable[RunnerDemand], hosts: Sequence[RunnerHost]
) -> list[RunnerPlacement]:
    """Place ``demands`` (in their order) on ``hosts``; demands that fit nowhere are left."""
    load = {h.agent_id: h.held for h in hosts}
    placements: list[RunnerPlacement] = []
    for demand in demands:
        free = [
            h
            for h in hosts
            if not h.draining
            and not h.degraded
            and load[h.agent_id] < h.runner_slots
            and h.matches(demand.selector)
        ]
        if not free:
            continue
        best = min(
            free,
            key=lambda h: (h.agent_id == demand.avoid_agent, load[h.agent_id], h.name),
        )
        load[best.agent_id] += 1
        placements.append(RunnerPlacement(demand.flow_run_id, best.agent_id))
    return placements


def has_runner_host(selector: Selector, hosts: Sequence[RunnerHost]) -> bool:
    """Whether some connected agent offering runner slots could ever take this run."""
    return any(h.runner_slots > 0 and h.matches(selector) for h in hosts)
