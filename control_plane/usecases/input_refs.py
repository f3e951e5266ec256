"""Checks of the stored results a submission's inputs name, before anything is stored.

Every reference must be one this control plane recorded (a step run's result reference with
exactly the same fields) in a run the submitter may read, so a forged reference can never make
an agent read an arbitrary object. And when the producing environment has a residency rule, at
least one known agent that could run the step must be allowed to read it; otherwise the
submission is refused (``ResidencyRefusal``). When no agent matches the step's target yet, the
scheduler enforces the rules at assignment instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from sqlalchemy import select

from control_plane.orchestration.residency_check import Reader, Residency, refusal, residency_of
from control_plane.orchestration.values import StepSubmission
from control_plane.store.models import AgentRow, FlowRunRow, StepRunRow
from control_plane.store.queries import covered_by
from control_plane.store.tx import Tx
from control_plane.usecases.environments import ResidencyRefusal, rules_for
from meridian.core.errors import ValidationError
from meridian.core.resultref import ResultRef
from meridian.core.selectors import ENVIRONMENT_LABEL, Selector, parse_selector

# References looked up per statement (two IN lists of this size).
_REF_CHUNK = 400

FORGED = "inputs name a result reference this control plane did not record"


def check_recorded(tx: Tx, scope: Sequence[str], subs: Sequence[StepSubmission]) -> None:
    """Refuse the submission unless every reference its calls name was recorded as a step's
    result in a run ``scope`` covers (empty scope: any run).

    Raises:
        ValidationError: naming the first call whose reference is unknown or not readable,
            and the reference (never its URI: it is not the caller's to learn).
    """
    wanted: dict[str, tuple[str, ResultRef]] = {}
    for sub in subs:
        for ref in sub.input_refs:
            wanted.setdefault(ref.to_json(), (sub.key, ref))
    if not wanted:
        return
    found: set[str] = set()
    texts = sorted(wanted)
    for start in range(0, len(texts), _REF_CHUNK):
        chunk = texts[start : start + _REF_CHUNK]
        query = (
            select(StepRunRow.result_ref_json)
            .join(FlowRunRow, FlowRunRow.id == StepRunRow.flow_run_id)
            .where(
                StepRunRow.result_ref_sha256.in_(sorted({wanted[t][1].sha256 for t in chunk})),
                StepRunRow.result_ref_json.in_(chunk),
            )
            .distinct()
        )
        if scope:
            query = query.where(covered_by(tx.session, scope))
        found.update(text for text in tx.session.scalars(query) if text)
    for text in texts:
        if text not in found:
            key, ref = wanted[text]
            raise ValidationError(
                f"step {key[:200]!r}: {FORGED} (environment {ref.environment!r}, store "
                f"{ref.store!r}, sha256 {ref.sha256[:12]}…); pass only references that steps "
                "of runs you may read returned"
            )


def check_residency(tx: Tx, run_id: str, subs: Sequence[StepSubmission]) -> dict[str, Residency]:
    """The residency of each call whose inputs were produced under a rule (by step key; the
    others are absent), after refusing the submission if one of them cannot run anywhere
    its inputs may be read.

    Raises:
        ResidencyRefusal: naming the step, the producing environment and its rule.
    """
    producers = {ref.environment for sub in subs for ref in sub.input_refs}
    if not producers:
        return {}
    rules = rules_for(tx.session, producers)
    if not rules:
        return {}
    agents: list[tuple[Reader, frozenset[str]]] | None = None
    selectors: dict[str, Selector] = {}
    checked: set[tuple[str, str, Residency]] = set()
    found: dict[str, Residency] = {}
    for sub in subs:
        residency = residency_of((ref.environment for ref in sub.input_refs), rules)
        if not residency:
            continue
        found[sub.key] = residency
        need = (sub.spec.target, sub.spec.provider, residency)
        if need in checked:
            continue
        checked.add(need)
        agents = _known_readers(tx) if agents is None else agents
        selector = selectors.get(sub.spec.target) or parse_selector(sub.spec.target)
        selectors[sub.spec.target] = selector
        candidates = [
            reader
            for reader, providers in agents
            if sub.spec.provider in providers
            and selector.matches({**reader.labels, ENVIRONMENT_LABEL: reader.environment})
        ]
        decision = refusal(residency, sub.key, candidates)
        if decision is not None:
            raise ResidencyRefusal(
                decision.message,
                {
                    "flow_run_id": run_id,
                    "step_key": sub.key[:512],
                    "target": sub.spec.target,
                    "provider": sub.spec.provider,
                    "rules": {rule.environment: str(rule) for rule in residency},
                    "environments": sorted({c.environment for c in candidates}),
                },
            )
    return found


def _known_readers(tx: Tx) -> list[tuple[Reader, frozenset[str]]]:
    """Every enrolled, not revoked agent: where it is, its labels (and which its join token
    pinned), its providers."""
    rows = tx.session.execute(
        select(
            AgentRow.environment, AgentRow.labels, AgentRow.pinned_labels, AgentRow.providers
        ).where(AgentRow.revoked_at.is_(None))
    )
    return [
        (
            Reader(environment, _text_labels(labels), _text_labels(pinned)),
            frozenset(str(p) for p in providers or ()),
        )
        for environment, labels, pinned, providers in rows
    ]


def _text_labels(labels: Mapping[str, object] | None) -> dict[str, str]:
    return {str(k): str(v) for k, v in (labels or {}).items()}


def constrain_queued(tx: Tx, residency: Mapping[str, Residency]) -> None:
    """Give the attempts this transaction queued (``tx.effects.queued``) the residency of
    their step (``residency``: by step run id), so the scheduler never assigns them to an
    agent that may not read their inputs."""
    if not residency:
        return
    tx.effects.queued[:] = [
        dataclasses.replace(entry, residency=residency[entry.step_run_id])
        if entry.step_run_id in residency
        else entry
        for entry in tx.effects.queued
    ]
