"""Environments as the control plane governs them: their data residency rules (set by admins,
audited), what the scheduler needs of those rules, and the audit record of a refused
submission.

A rule restricts who may read results produced in its environment (``meridian.core.residency``).
It is read when a step's attempt is queued (``residency_for_steps``) and when a submission is
checked; changing a rule applies to attempts queued after the change — attempts already queued
keep the rules they were queued with until the scheduler's queue is rebuilt from the store (at
a control plane's start).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from control_plane import audit
from control_plane.orchestration.residency_check import NO_RESIDENCY, Residency, residency_of
from control_plane.store.models import AgentRow, EnvironmentRow, StepRunRow
from control_plane.store.tx import Tx
from meridian.core.errors import PermissionDenied, ValidationError
from meridian.core.residency import ResidencyRefused, ResidencyRule, parse_rule
from meridian.core.resultref import ResultRef
from meridian.core.selectors import MAX_SELECTOR_LENGTH

MAX_RULE_LENGTH = 1024  # the stored column's width
MAX_REASON = 1000
_ID_CHUNK = 500


class ResidencyRefusal(ResidencyRefused):
    """A submission refused because no agent that could run a step may read its inputs.

    A ``ResidencyRefused`` like a refused download, so callers see one class (and one status
    code) for every residency refusal; ``details`` are for the audit record.

    The submission's transaction rolls back; whoever ran it records the refusal with
    :func:`record_residency_refusal` in a transaction of its own, so the audit log keeps it.
    """

    def __init__(self, message: str, details: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.details = dict(details)


@dataclass(frozen=True)
class EnvironmentPolicy:
    """What the store knows of an environment: its rule and how many agents it has."""

    name: str
    residency: str  # "" = no rule
    agents: int  # enrolled, not revoked
    updated_by: str = ""
    pinned_labels_only: bool = False  # the rule counts only labels join tokens pinned


# ---- rules --------------------------------------------------------------------------------


def rules_for(session: Session, environments: Iterable[str]) -> dict[str, ResidencyRule]:
    """The residency rules of ``environments`` that have one, by environment."""
    names = sorted(set(environments))
    rules: dict[str, ResidencyRule] = {}
    for start in range(0, len(names), _ID_CHUNK):
        rows = session.execute(
            select(
                EnvironmentRow.name, EnvironmentRow.residency, EnvironmentRow.residency_pinned_only
            ).where(
                EnvironmentRow.name.in_(names[start : start + _ID_CHUNK]),
                EnvironmentRow.residency != "",
            )
        )
        for name, text, pinned_only in rows:
            # Validated when it was set.
            rule = parse_rule(name, text, pinned_labels_only=bool(pinned_only))
            if rule is not None:
                rules[name] = rule
    return rules


def stored_refs(text: str | None) -> list[ResultRef]:
    """The references a step run's ``input_refs_json`` lists (checked when it was stored)."""
    if not text:
        return []
    return [ResultRef.from_value(value) for value in json.loads(text)]


def refs_text(refs: Sequence[ResultRef]) -> str | None:
    """The stored form of a call's input references: a JSON list of reference values, or
    None for a call without any."""
    if not refs:
        return None
    return json.dumps([ref.to_value() for ref in refs], separators=(",", ":"), sort_keys=True)


def residency_for_steps(session: Session, step_ids: Iterable[str]) -> dict[str, Residency]:
    """The residency of each step run whose inputs name stored results under a rule (others
    are absent): what its queued attempts may be assigned under. Reads only the step runs
    that have input references."""
    ids = sorted(set(step_ids))
    producers: dict[str, set[str]] = {}
    for start in range(0, len(ids), _ID_CHUNK):
        rows = session.execute(
            select(StepRunRow.id, StepRunRow.input_refs_json).where(
                StepRunRow.id.in_(ids[start : start + _ID_CHUNK]),
                StepRunRow.input_refs_json.is_not(None),
            )
        )
        for step_id, text in rows:
            producers[step_id] = {ref.environment for ref in stored_refs(text)}
    if not producers:
        return {}
    rules = rules_for(session, set().union(*producers.values()))
    found = {step_id: residency_of(envs, rules) for step_id, envs in producers.items()}
    return {step_id: r for step_id, r in found.items() if r != NO_RESIDENCY}


# ---- listing and setting ------------------------------------------------------------------


def environment_policies(session: Session, caller: Sequence[str] = ()) -> list[EnvironmentPolicy]:
    """Every environment that has agents (enrolled, not revoked) or a stored rule, by name;
    a caller scoped to environments sees only those."""
    counts = dict(
        session.execute(
            select(AgentRow.environment, func.count())
            .where(AgentRow.revoked_at.is_(None))
            .group_by(AgentRow.environment)
        ).all()
    )
    rows = {row.name: row for row in session.scalars(select(EnvironmentRow))}
    names = sorted(set(counts) | set(rows))
    if caller:
        names = [n for n in names if n in caller]
    return [
        EnvironmentPolicy(
            name=name,
            residency=rows[name].residency if name in rows else "",
            agents=int(counts.get(name, 0)),
            updated_by=rows[name].updated_by if name in rows else "",
            pinned_labels_only=bool(rows[name].residency_pinned_only) if name in rows else False,
        )
        for name in names
    ]


def set_residency(
    tx: Tx,
    environment: str,
    rule: str,
    reason: str = "",
    caller: Sequence[str] = (),
    *,
    pinned_labels_only: bool = False,
) -> EnvironmentPolicy:
    """Set (or, with an empty ``rule``, remove) ``environment``'s residency rule; audited
    with who did it and why. The rule is stored in its canonical form. ``pinned_labels_only``:
    the rule counts only the labels agents' join tokens pinned, never those agents claim.

    It applies to attempts queued from now on; attempts already queued keep the rules they
    were queued with (until the scheduler's queue is rebuilt at a control plane's start).

    Raises:
        ValidationError: the environment name or the rule is invalid, or the reason too long.
        PermissionDenied: a caller scoped to environments names another one.
    """
    if len(rule) > MAX_SELECTOR_LENGTH:
        raise ValidationError(f"a residency rule is limited to {MAX_SELECTOR_LENGTH} characters")
    if len(reason) > MAX_REASON:
        raise ValidationError(f"the reason is limited to {MAX_REASON} characters")
    parsed = parse_rule(environment, rule, pinned_labels_only=pinned_labels_only)
    text = str(parsed) if parsed is not None else ""
    pinned_only = parsed is not None and parsed.pinned_labels_only
    if len(text) > MAX_RULE_LENGTH:
        raise ValidationError(f"a residency rule is limited to {MAX_RULE_LENGTH} characters")
    if caller and environment not in caller:
        raise PermissionDenied(
            f"this API token is scoped to environment(s) {', '.join(caller)}; it cannot set "
            f"the residency rule of {environment!r}"
        )
    row = tx.session.get(EnvironmentRow, environment, with_for_update=True)
    previous = row.residency if row is not None else ""
    previous_pinned_only = bool(row.residency_pinned_only) if row is not None else False
    actor = audit.current_actor()
    if not text:
        if row is not None:
            tx.session.delete(row)
    elif row is None:
        tx.session.add(
            EnvironmentRow(
                name=environment,
                residency=text,
                residency_pinned_only=pinned_only,
                updated_at=tx.now,
                updated_by=actor,
            )
        )
    else:
        row.residency, row.updated_at, row.updated_by = text, tx.now, actor
        row.residency_pinned_only = pinned_only
    audit.append(
        tx.session,
        actor=audit.CLI,
        action="environment.residency_set",
        subject=environment,
        details={
            "environment": environment,
            "rule": text,
            "pinned_labels_only": pinned_only,
            "previous": previous,
            "previous_pinned_labels_only": previous_pinned_only,
            "reason": reason,
        },
        now=tx.now,
    )
    agents = tx.session.scalar(
        select(func.count()).where(
            AgentRow.environment == environment, AgentRow.revoked_at.is_(None)
        )
    )
    return EnvironmentPolicy(
        environment, text, int(agents or 0), actor if text else "", pinned_only
    )


def record_residency_refusal(tx: Tx, refusal: ResidencyRefusal) -> None:
    """Write the audit record of a submission refused for data residency (``residency.refused``)
    — in its own transaction, since the submission's rolled back."""
    audit.append(
        tx.session,
        actor=audit.CLI,
        action="residency.refused",
        subject=str(refusal.details.get("flow_run_id", ""))[:255],
        details={**refusal.details, "message": str(refusal)[:2000]},
        now=tx.now,
    )
