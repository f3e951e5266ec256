"""Why a queued attempt is still waiting: a pure classification over what the scheduler knows.

The scheduler asks this for every due attempt it could not assign in a pass. The answer is one
:class:`WaitReason` (stable, machine-readable: the event's ``details``) and a bounded message
for people, naming the nearest environments and labels and spotting the usual typos (a value
that differs only in case, a provider no agent offers).

Order of the checks, most specific first: a connected agent could run the step but is busy
(``full``), or every such agent is ``draining`` or ``degraded``; else an enrolled agent could
run it but is not connected (``disconnected``); else the labels match somewhere but the
provider is not offered (``no_provider``); else nothing matches (``no_match``), or no agent is
enrolled at all (``no_agents``). A step whose inputs name stored results counts only agents
allowed to read them (``residency_check``); when agents match its target but none may read its
inputs, it waits for ``residency`` and the message names the rule. Likewise a step that names a
result store counts only agents that advertised it; when connected agents match its target but
none has the store, it waits for ``result_store`` and the message names the store and theirs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from control_plane.orchestration.matching import (
    AgentSlot,
    advertised_stores,
    could_run,
    effective_labels,
    explain_no_match,
    has_result_store,
    is_degraded,
    may_read_inputs,
)
from control_plane.orchestration.residency_check import (
    NO_RESIDENCY,
    Reader,
    Residency,
    waiting_message,
)
from meridian.core.selectors import Selector

MAX_WAIT_MESSAGE = 1000
_MAX_NAMES = 5
_MAX_TEXT = 60
_LIVE = ("connected", "draining")


class WaitReason(StrEnum):
    FULL = "full"
    DRAINING = "draining"
    DEGRADED = "degraded"
    DISCONNECTED = "disconnected"
    NO_PROVIDER = "no_provider"
    NO_MATCH = "no_match"
    NO_AGENTS = "no_agents"
    RESIDENCY = "residency"
    RESULT_STORE = "result_store"
    CONCURRENCY_LIMIT = "concurrency_limit"  # decided by usecases.limits, not here


@dataclass(frozen=True)
class KnownAgent:
    """An enrolled, not revoked agent as stored (connected or not)."""

    agent_id: str
    name: str
    environment: str
    labels: Mapping[str, str]
    providers: frozenset[str]
    status: str = "disconnected"
    pinned_labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Waiting:
    reason: WaitReason
    message: str


def classify_wait(
    selector: Selector,
    provider: str,
    connected: Sequence[AgentSlot],
    known: Sequence[KnownAgent],
    residency: Residency = NO_RESIDENCY,
    result_store: str = "",
) -> Waiting:
    """Why an attempt with ``selector``/``provider`` was not assigned in this pass.

    ``connected``: the slots the scheduler planned with (agents heard from recently);
    ``known``: every enrolled agent that is not revoked, connected or not; ``residency``:
    the rules of the step's referenced inputs; ``result_store``: the store the step names.
    """
    busy = classify_busy(selector, provider, connected, residency, result_store)
    if busy is not None:
        return busy
    if result_store:
        missing = _store_missing(selector, provider, connected, residency, result_store)
        if missing is not None:
            return missing
    if residency:
        blocked = _residency_blocked(selector, provider, connected, known, residency)
        if blocked is not None:
            return blocked
        known = [a for a in known if may_read_inputs(residency, _as_slot(a))]
    live = {s.agent_id for s in connected}
    offline = [
        a for a in known if a.agent_id not in live and _known_could_run(selector, provider, a)
    ]
    if offline:
        names = _names(a.name for a in offline)
        # Stored as connected but missing from the slots: its stream went silent.
        statuses = sorted({"silent" if a.status in _LIVE else a.status for a in offline})
        text = (
            f"the agents that could run this step are not connected: {names} "
            f"({'/'.join(statuses)}); start them or raise schedule_timeout"
        )
        return _waiting(WaitReason.DISCONNECTED, text)
    slots = [*connected, *(_as_slot(a) for a in known if a.agent_id not in live)]
    if not slots:
        return _waiting(WaitReason.NO_AGENTS, explain_no_match(selector, provider, [], {}))
    environments = {a.environment: dict(a.labels) for a in known}
    explanation = explain_no_match(selector, provider, connected, environments)
    if any(selector.matches(effective_labels(s)) for s in slots):
        offered = sorted({p for s in slots for p in s.providers})
        text = (
            f'no agent offers provider "{_clip(provider)}" (offered: '
            f"{_clip(', '.join(offered)) or 'none'}); {explanation}"
        )
        return _waiting(WaitReason.NO_PROVIDER, text)
    hint = typo_hint(selector, slots)
    return _waiting(WaitReason.NO_MATCH, f"{explanation}{hint}")


def classify_busy(
    selector: Selector,
    provider: str,
    connected: Sequence[AgentSlot],
    residency: Residency = NO_RESIDENCY,
    result_store: str = "",
) -> Waiting | None:
    """``full`` / ``degraded`` / ``draining`` when a connected agent could run the step (may
    read its inputs, has the store it names), else None. Needs only the scheduler's slots:
    the common case (a fan-out waiting for free slots) is answered without reading the stored
    agents."""
    capable = [
        s
        for s in _capable(selector, provider, connected, residency)
        if has_result_store(result_store, s)
    ]
    return _busy(capable) if capable else None


def _capable(
    selector: Selector, provider: str, connected: Sequence[AgentSlot], residency: Residency
) -> list[AgentSlot]:
    return [
        s
        for s in connected
        if could_run(selector, provider, s) and (not residency or may_read_inputs(residency, s))
    ]


def _store_missing(
    selector: Selector,
    provider: str,
    connected: Sequence[AgentSlot],
    residency: Residency,
    result_store: str,
) -> Waiting | None:
    """``result_store`` when connected agents could run the step but none advertised the store
    it names (asked after ``classify_busy``: none of them has it). Stores are known only for
    connected agents, so one that is not connected may still have it: the other reasons say
    why it waits then."""
    capable = _capable(selector, provider, connected, residency)
    if not capable:
        return None
    text = (
        f"waiting for an agent with result store {_clip(result_store)!r}: no connected agent "
        f"matching the target has it ({_names(s.name for s in capable)}; their stores: "
        f"{advertised_stores(capable)}); configure [result_stores.{_clip(result_store)}] at "
        "their site or name one of their stores"
    )
    return _waiting(WaitReason.RESULT_STORE, text)


def _residency_blocked(
    selector: Selector,
    provider: str,
    connected: Sequence[AgentSlot],
    known: Sequence[KnownAgent],
    residency: Residency,
) -> Waiting | None:
    """``residency`` when agents (connected or not) could run the step but none may read its
    inputs; None when one may, or when none could run it anyway (the other reasons say why)."""
    capable = [s for s in connected if could_run(selector, provider, s)]
    capable += [_as_slot(a) for a in known if _known_could_run(selector, provider, a)]
    if not capable or any(may_read_inputs(residency, s) for s in capable):
        return None
    readers = [Reader(s.environment, s.labels, s.pinned_labels) for s in capable]
    return _waiting(WaitReason.RESIDENCY, waiting_message(residency, readers))


def _busy(capable: Sequence[AgentSlot]) -> Waiting:
    usable = [s for s in capable if not s.draining and not is_degraded(s)]
    if usable:
        used = ", ".join(f"{_clip(s.name)} {s.in_use}/{s.capacity}" for s in usable[:_MAX_NAMES])
        more = f" and {len(usable) - _MAX_NAMES} more" if len(usable) > _MAX_NAMES else ""
        return _waiting(
            WaitReason.FULL,
            f"every matching agent is full ({used}{more} in use); waiting for a free slot",
        )
    degraded = [s for s in capable if is_degraded(s)]
    if degraded:
        names = _names(s.name for s in degraded)
        text = f"the matching agents are degraded or draining and take no new work: {names}"
        return _waiting(WaitReason.DEGRADED, text)
    names = _names(s.name for s in capable)
    text = (
        f"every matching agent is draining and takes no new work: {names}; "
        "start or re-enroll an agent with the target's labels"
    )
    return _waiting(WaitReason.DRAINING, text)


def typo_hint(selector: Selector, slots: Sequence[AgentSlot]) -> str:
    """`` (did you mean cloud=aws?)`` when a required key or value matches an agent's label
    apart from letter case: the most common reason a target matches nothing."""
    for requirement in selector.requirements:
        if requirement.operator not in ("=", "in", "exists"):
            continue
        for labels in (effective_labels(s) for s in slots):
            for key, value in labels.items():
                if key.lower() != requirement.key.lower():
                    continue
                if requirement.operator == "exists":
                    if key != requirement.key:
                        return f" (did you mean {_clip(key)}?)"
                    continue
                near = any(v.lower() == value.lower() for v in requirement.values)
                exact = key == requirement.key and value in requirement.values
                if near and not exact:
                    return f" (did you mean {_clip(key)}={_clip(value)}?)"
    return ""


def _known_could_run(selector: Selector, provider: str, agent: KnownAgent) -> bool:
    return could_run(selector, provider, _as_slot(agent))


def _as_slot(agent: KnownAgent) -> AgentSlot:
    # No result stores: they are known only for connected agents (their Hello), so a stored
    # agent is never judged on them (``_store_missing`` looks at connected slots only).
    return AgentSlot(
        agent_id=agent.agent_id,
        name=agent.name,
        environment=agent.environment,
        labels=agent.labels,
        providers=agent.providers,
        capacity=0,
        in_use=0,
        pinned_labels=agent.pinned_labels,
    )


def _waiting(reason: WaitReason, text: str) -> Waiting:
    if len(text) > MAX_WAIT_MESSAGE:
        text = text[: MAX_WAIT_MESSAGE - 3] + "..."
    return Waiting(reason, text)


def _names(names: Iterable[str]) -> str:
    listed = sorted({_clip(n) for n in names})
    shown = ", ".join(listed[:_MAX_NAMES])
    return shown + (f" and {len(listed) - _MAX_NAMES} more" if len(listed) > _MAX_NAMES else "")


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 3] + "..."
