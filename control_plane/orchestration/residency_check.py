"""Data residency when steps are submitted and assigned: pure checks over rules and agents.

A step whose inputs name stored results (``ResultRef``) may only run on an agent allowed to read
each of them: an agent of the producing environment (the bytes do not move), or one whose
labels, with ``environment=<its environment>``, match the producing environment's residency
rule (``meridian.core.residency``); only the labels its join token pinned when the rule says
``pinned_labels_only``. A step's :data:`Residency` is the rules of the environments
that produced its inputs, computed when its attempt is queued: a rule changed later applies to
attempts queued after the change (and to every queued attempt when the scheduler's queue is
rebuilt from the store, at a control plane's start).

Steps without referenced inputs have no residency (the empty tuple): planning them costs
nothing more than before.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from meridian.core.residency import ResidencyDecision, ResidencyRule, may_read
from meridian.core.selectors import ENVIRONMENT_LABEL

# The rules a step's readers must satisfy, one per producing environment that has a rule,
# sorted by environment: hashable, so plans and waiting groups can key on it.
Residency = tuple[ResidencyRule, ...]
NO_RESIDENCY: Residency = ()
_MAX_NAMES = 5
_MAX_TEXT = 60


@dataclass(frozen=True)
class Reader:
    """An agent as residency sees it: its environment, its labels, and which of them its join
    token pinned."""

    environment: str
    labels: Mapping[str, str]
    pinned: Mapping[str, str] = field(default_factory=dict)


def residency_of(producers: Iterable[str], rules: Mapping[str, ResidencyRule]) -> Residency:
    """The rules that bind a step whose inputs were produced in ``producers``."""
    return tuple(rules[env] for env in sorted(set(producers)) if env in rules)


def allows(
    residency: Residency,
    environment: str,
    labels: Mapping[str, str],
    pinned: Mapping[str, str] | None = None,
) -> bool:
    """Whether an agent in ``environment`` with ``labels`` (``pinned``: those its join token
    fixed) may read every input (no rule: always). The same decision as ``may_read``, without
    its validation: this runs per agent per planned attempt."""
    if not residency:
        return True
    merged: dict[str, str] | None = None
    for rule in residency:
        if rule.environment == environment:
            continue
        if rule.pinned_labels_only:
            judged = {**(pinned or {}), ENVIRONMENT_LABEL: environment}
        else:
            if merged is None:
                merged = {**labels, ENVIRONMENT_LABEL: environment}
            judged = merged
        if not rule.selector.matches(judged):
            return False
    return True


def reader_allowed(residency: Residency, reader: Reader) -> bool:
    return allows(residency, reader.environment, reader.labels, reader.pinned)


def describe(residency: Residency) -> str:
    """A stable text naming the rules (``aws-eu: region in (eu-west-1)``; "" for none), used
    to group waiting attempts and in event details."""
    return "; ".join(f"{rule.environment}: {rule.described}" for rule in residency)


def refusal(
    residency: Residency, step_key: str, candidates: Sequence[Reader]
) -> ResidencyDecision | None:
    """At submission: the refusal when agents could run the step (``candidates``: the known
    agents matching its target and provider) but none of them may read its inputs; None when
    one may, or when no agent matches yet (the scheduler enforces the rules then).

    The message names the step, the producing environment and its rule, and a reader that
    breaks it (``may_read``'s wording).
    """
    if not residency or not candidates:
        return None
    if any(reader_allowed(residency, c) for c in candidates):
        return None
    rule, reader = _blocking_rule(residency, candidates)
    decision = may_read(rule, rule.environment, reader.environment, reader.labels, reader.pinned)
    environments = sorted({c.environment for c in candidates})
    shown = ", ".join(_clip(e) for e in environments[:_MAX_NAMES])
    more = f" and {len(environments) - _MAX_NAMES} more" if len(environments) > _MAX_NAMES else ""
    return ResidencyDecision(
        False,
        f"step {_clip(step_key)!r} may not run where its inputs may be read: "
        f"{decision.message}; no agent that matches the step's target may read them "
        f"(environments matching it: {shown}{more}); target the step at an environment the "
        "rule allows",
    )


def waiting_message(residency: Residency, capable: Sequence[Reader]) -> str:
    """Why an attempt waits although agents match its target: none may read its inputs."""
    rule, _ = _blocking_rule(residency, capable)
    names = sorted({c.environment for c in capable})
    shown = ", ".join(_clip(n) for n in names[:_MAX_NAMES])
    more = f" and {len(names) - _MAX_NAMES} more" if len(names) > _MAX_NAMES else ""
    return (
        f"waiting for an agent allowed to read results of environment "
        f"{_clip(rule.environment)!r} under residency rule {_clip(rule.described)!r} "
        f"(agents matching the target are in {shown}{more}, which the rule does not allow)"
    )


def _blocking_rule(residency: Residency, readers: Sequence[Reader]) -> tuple[ResidencyRule, Reader]:
    """The rule to name: one no reader satisfies if there is one, else the first rule the
    first reader breaks; with that reader."""
    for rule in residency:
        if not any(reader_allowed((rule,), r) for r in readers):
            return rule, readers[0]
    first = readers[0]
    for rule in residency:
        if not reader_allowed((rule,), first):
            return rule, first
    return residency[0], first  # unreachable when no reader is allowed


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 3] + "..."
