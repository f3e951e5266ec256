"""What a run is waiting for, read from its audit view: why queued steps are not running yet
(the control plane's ``attempt.waiting`` events) and, for a CANCELLING run, which attempts wait
for which agent's confirmation. Shared by ``runs show`` and ``runs cancel``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from meridian import models
from meridian.cli.render import truncate

WAITING_KIND = "attempt.waiting"
HELD_STATES = frozenset({"ASSIGNED", "RUNNING"})
MAX_LISTED = 20
MESSAGE_WIDTH = 400


@dataclass(frozen=True)
class WaitingStep:
    step_key: str
    attempt_number: int
    reason: str  # the latest attempt.waiting message; "" before the first scheduler pass


@dataclass(frozen=True)
class Unconfirmed:
    step_key: str
    attempt_number: int
    state: str
    agent: str  # the agent's name (or id) that must confirm the attempt stopped


def waiting_steps(detail: models.RunDetail) -> list[WaitingStep]:
    """Queued attempts and the latest reason the control plane gave: for the attempt itself,
    or for the steps with the same target and provider (one event explains them all)."""
    by_attempt: dict[str, str] = {}
    by_target: dict[tuple[str, str], str] = {}
    target_of = {step.key: (step.target, step.provider) for step in detail.steps}
    for event in detail.events:
        if event.kind != WAITING_KIND:
            continue
        if event.attempt_id:
            by_attempt[event.attempt_id] = event.message
        if event.step_key in target_of:
            by_target[target_of[event.step_key]] = event.message
    return [
        WaitingStep(
            step.key,
            attempt.number,
            by_attempt.get(attempt.attempt_id) or by_target.get((step.target, step.provider), ""),
        )
        for step in detail.steps
        for attempt in step.attempts
        if attempt.state == "QUEUED"
    ]


def unconfirmed(detail: models.RunDetail) -> list[Unconfirmed]:
    """Attempts an agent still holds: a CANCELLING run ends when each of them is confirmed."""
    return [
        Unconfirmed(step.key, a.number, a.state, a.agent_name or a.agent_id or "?")
        for step in detail.steps
        for a in step.attempts
        if a.state in HELD_STATES
    ]


def unconfirmed_lines(
    items: Sequence[Unconfirmed], agent_status: Mapping[str, str] | None = None
) -> list[str]:
    lines = []
    for item in items[:MAX_LISTED]:
        status = (agent_status or {}).get(item.agent, "")
        suffix = f", agent is {status}" if status else ""
        lines.append(
            f"  {item.step_key} attempt {item.attempt_number} ({item.state}): waits for agent "
            f"{item.agent} to confirm{suffix}"
        )
    if len(items) > MAX_LISTED:
        lines.append(f"  ... and {len(items) - MAX_LISTED} more")
    return lines


def pending_lines(detail: models.RunDetail) -> list[str]:
    """The ``runs show`` section: empty when the run waits for nothing."""
    lines: list[str] = []
    waiting = [w for w in waiting_steps(detail) if detail.state not in _ENDED]
    if waiting:
        lines += ["", "Waiting to start:"]
        for w in waiting[:MAX_LISTED]:
            why = truncate(w.reason, MESSAGE_WIDTH) if w.reason else "queued (no reason yet)"
            lines.append(f"  {w.step_key} attempt {w.attempt_number}: {why}")
        if len(waiting) > MAX_LISTED:
            lines.append(f"  ... and {len(waiting) - MAX_LISTED} more")
    if detail.state == "CANCELLING":
        held = unconfirmed(detail)
        lines += ["", "Cancelling: waiting for the agents to confirm their attempts stopped:"]
        lines += unconfirmed_lines(held) or ["  none (the run ends at the next change)"]
    return lines


def pending_to_dict(detail: models.RunDetail) -> dict[str, Any]:
    return {
        "waiting": [
            {"step_key": w.step_key, "attempt": w.attempt_number, "reason": w.reason}
            for w in waiting_steps(detail)
        ],
        "awaiting_confirmation": [
            {
                "step_key": u.step_key,
                "attempt": u.attempt_number,
                "state": u.state,
                "agent": u.agent,
            }
            for u in (unconfirmed(detail) if detail.state == "CANCELLING" else [])
        ],
    }


_ENDED = frozenset({"COMPLETED", "FAILED", "CANCELLED", "CRASHED"})
