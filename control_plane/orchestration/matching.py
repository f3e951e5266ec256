"""Matching a step's target to connected agents: pure functions over agent slots.

An agent is eligible for an attempt when it is not draining, offers the step's provider, has a
free slot and its labels satisfy the target selector; a step whose inputs name stored results
must also go to an agent allowed to read them (``residency_check``), and a step that names a
result store (``@step(result_store=...)``) to an agent that advertised that store. Every agent
also carries the implicit label ``environment=<its environment>``, so
``target="environment=onprem-dc1"`` works without anyone copying the environment name into the
labels.

When nothing is eligible for long enough, :func:`explain_no_match` writes the message the user
sees, listing what the control plane knows about so the typo or missing agent is obvious.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from control_plane.orchestration.residency_check import NO_RESIDENCY, Residency, allows
from meridian.core.selectors import ENVIRONMENT_LABEL, Selector

_MAX_ENVIRONMENTS_SHOWN = 10
_MAX_LABELS_SHOWN = 8
_MAX_TEXT = 60


@dataclass(frozen=True)
class AgentSlot:
    """What the scheduler knows about one connected agent at this moment."""

    agent_id: str
    name: str
    environment: str
    labels: Mapping[str, str]
    providers: frozenset[str]
    capacity: int
    in_use: int
    draining: bool = False
    # An agent that reported a local fault (e.g. a full disk) takes no new work until it
    # recovers, like a draining one; the registry sets it from the agent's session.
    degraded: bool = False
    # The labels the agent's join token fixed (residency rules with ``pinned_labels_only``).
    pinned_labels: Mapping[str, str] = field(default_factory=dict)
    # The result stores the agent advertised in its Hello (names): a step that names a store
    # runs only where it exists, or its result could not be kept.
    result_stores: frozenset[str] = frozenset()


def is_degraded(slot: AgentSlot) -> bool:
    """The hook every "takes no new work" decision uses for a degraded agent."""
    return slot.degraded


def accepts_work(slot: AgentSlot) -> bool:
    """Not draining, not degraded, and a free slot."""
    return not slot.draining and not is_degraded(slot) and 0 <= slot.in_use < slot.capacity


def effective_labels(slot: AgentSlot) -> dict[str, str]:
    """The agent's labels plus ``environment=<environment>``, which always wins: an agent may not
    claim to be in an environment its certificate does not name."""
    return {**slot.labels, ENVIRONMENT_LABEL: slot.environment}


def could_run(selector: Selector, provider: str, slot: AgentSlot) -> bool:
    """The agent offers the provider and its labels satisfy the selector (room ignored)."""
    return provider in slot.providers and selector.matches(effective_labels(slot))


def has_potential_match(selector: Selector, provider: str, agents: Sequence[AgentSlot]) -> bool:
    """Whether some connected agent could run the step once it has room (capacity and draining
    ignored): tells "wait for a slot" apart from "nothing here can ever run this"."""
    return any(could_run(selector, provider, slot) for slot in agents)


def may_read_inputs(residency: Residency, slot: AgentSlot) -> bool:
    """Whether the agent may read the step's referenced inputs under their residency rules."""
    return allows(residency, slot.environment, slot.labels, slot.pinned_labels)


def has_result_store(result_store: str, slot: AgentSlot) -> bool:
    """Whether the agent can keep the step's result (``""``: the step names no store, so any
    agent can; the environment's default applies)."""
    return not result_store or result_store in slot.result_stores


def advertised_stores(slots: Sequence[AgentSlot]) -> str:
    """The stores ``slots`` advertise, for messages: ``onprem-fs, scratch`` or ``none``."""
    names = sorted({_clip(n) for s in slots for n in s.result_stores})
    shown = ", ".join(names[:_MAX_LABELS_SHOWN])
    more = f" and {len(names) - _MAX_LABELS_SHOWN} more" if len(names) > _MAX_LABELS_SHOWN else ""
    return f"{shown}{more}" if names else "none"


def store_refusal(step_key: str, result_store: str, candidates: Sequence[AgentSlot]) -> str | None:
    """At submission: why the step cannot run when ``candidates`` (the agents matching its
    target and provider, all connected, so their stores are known) exist and none advertised
    the store it names; None when one did, or when there are no candidates (it waits then)."""
    if not result_store or not candidates:
        return None
    if any(has_result_store(result_store, slot) for slot in candidates):
        return None
    names = sorted({_clip(slot.name) for slot in candidates})
    shown = ", ".join(names[:_MAX_LABELS_SHOWN])
    more = f" and {len(names) - _MAX_LABELS_SHOWN} more" if len(names) > _MAX_LABELS_SHOWN else ""
    return (
        f"step {_clip(step_key)!r} names result store {_clip(result_store)!r}, which no "
        f"connected agent matching its target and provider has (agents: {shown}{more}; their "
        f"stores: {advertised_stores(candidates)}); configure "
        f"[result_stores.{_clip(result_store)}] on those agents or name one of their stores"
    )


def choose_agent(
    selector: Selector,
    provider: str,
    agents: Sequence[AgentSlot],
    *,
    tiebreak: int = 0,
    residency: Residency = NO_RESIDENCY,
    result_store: str = "",
) -> AgentSlot | None:
    """Pick the eligible agent with the most spare room, or ``None``. ``residency``: the
    rules of the step's referenced inputs; an agent that may not read them is never eligible.
    ``result_store``: the store the step names; an agent without it is never eligible.

    Order: lowest ``in_use / capacity``, then fewest ``in_use``, then agent id; agents still
    tied are rotated by ``tiebreak`` so successive calls with an incrementing tiebreak spread
    work round-robin instead of always filling the same agent first.
    """
    eligible = [
        slot
        for slot in agents
        if accepts_work(slot)
        and could_run(selector, provider, slot)
        and (not residency or may_read_inputs(residency, slot))
        and has_result_store(result_store, slot)
    ]
    if not eligible:
        return None

    def load(slot: AgentSlot) -> tuple[float, int]:
        return (slot.in_use / slot.capacity, slot.in_use)

    best = min(load(slot) for slot in eligible)
    tied = sorted((s for s in eligible if load(s) == best), key=lambda s: s.agent_id)
    return tied[tiebreak % len(tied)]


def explain_no_match(
    selector: Selector,
    provider: str,
    agents: Sequence[AgentSlot],
    known_environments: Mapping[str, Mapping[str, str]],
) -> str:
    """The user-facing reason why no agent took a step, bounded in length.

    ``known_environments`` maps every environment the control plane has agents for (connected
    or not) to its labels; ``agents`` are the connected ones.
    """
    if selector.is_empty:
        head = f'no connected agent offers provider "{_clip(provider)}"'
    else:
        target = _clip(str(selector))
        head = f'no connected agent matches target "{target}" with provider "{_clip(provider)}"'
    hint = _hint(selector, provider, agents)
    by_env: dict[str, list[AgentSlot]] = {}
    for slot in agents:
        by_env.setdefault(slot.environment, []).append(slot)
    names = sorted(set(known_environments) | set(by_env))
    if not names:
        return f"{head}; no agents are enrolled yet (run `meridian agent enroll` at a site)"
    parts = [_describe(n, known_environments, by_env.get(n, [])) for n in names]
    if len(parts) > _MAX_ENVIRONMENTS_SHOWN:
        more = len(parts) - _MAX_ENVIRONMENTS_SHOWN
        parts = [*parts[:_MAX_ENVIRONMENTS_SHOWN], f"and {more} more"]
    return f"{head}{hint}; known environments: {', '.join(parts)}"


def _hint(selector: Selector, provider: str, agents: Sequence[AgentSlot]) -> str:
    """Say which half of the requirement failed when that is not obvious from the list."""
    matching = [s for s in agents if selector.matches(effective_labels(s))]
    if matching and not any(provider in s.providers for s in matching):
        offered = sorted({p for s in matching for p in s.providers})
        return f" (agents matching the target offer only: {_clip(', '.join(offered))})"
    if any(could_run(selector, provider, s) for s in agents):
        return " (matching agents are draining or have no capacity)"
    return ""


def _describe(
    environment: str,
    known_environments: Mapping[str, Mapping[str, str]],
    connected: Sequence[AgentSlot],
) -> str:
    labels = dict(known_environments.get(environment) or (connected[0].labels if connected else {}))
    labels.pop(ENVIRONMENT_LABEL, None)
    shown = [f"{k}={_clip(v)}" for k, v in sorted(labels.items())[:_MAX_LABELS_SHOWN]]
    if len(labels) > _MAX_LABELS_SHOWN:
        shown.append("...")
    if not connected:
        status = "disconnected"
    else:
        providers = sorted({p for s in connected for p in s.providers})
        draining = " draining" if all(s.draining for s in connected) else ""
        status = f"connected{draining}, providers: {_clip(' '.join(providers))}"
    return f"{_clip(environment)} {{{', '.join(shown)}}} ({status})"


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 3] + "..."
