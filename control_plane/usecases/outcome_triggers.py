"""Outcome triggers: a run of one deployment ending in a chosen state runs another deployment.

``meridian deploy ... --on-completion-of UPSTREAM [--on-state FAILED]`` stores an
``OutcomeTrigger`` in the downstream deployment's version. When a run of UPSTREAM ends, the use
case that ends it calls :func:`fire_outcome_triggers` in the same transaction: every
deployment whose *current* version has a trigger on UPSTREAM and that state is triggered, with
the upstream run's id and result (its JSON value) in the parameters the trigger names. The
idempotency key ``outcome:<upstream run id>`` makes a repeated end (a retried FinishRun) or a
resumed run that ends again create no second downstream run, and the audit record of the
trigger names the upstream run.

A downstream deployment that refuses (paused, deleted, parameters that do not validate) never
stops the upstream run from ending: the refusal is undone in its savepoint and audited as
``trigger.refused``. Cycles are refused at deploy time; in case one exists anyway (two deploys
at once), each outcome-triggered run records its ``chain_depth`` and a chain longer than
``MAX_OUTCOME_CHAIN`` is refused the same way.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, tuple_

from control_plane import audit
from control_plane.orchestration.deployment_specs import (
    MAX_OUTCOME_CHAIN,
    OutcomeTrigger,
    spec_from_json,
)
from control_plane.store.models import DeploymentRow, DeploymentVersionRow, FlowRunRow
from control_plane.store.tx import Tx
from control_plane.usecases.savepoints import attempt
from meridian.core.errors import MeridianError
from meridian.core.states import TERMINAL_RUN

DEFAULT_STATES = ("COMPLETED",)
# Deployment versions are immutable, so their parsed triggers are kept per process: a run's end
# then reads each live deployment's id, name and current version, not every spec.
_KNOWN_VERSIONS = 4096
_ID_CHUNK = 200


@dataclass(frozen=True)
class OutcomeRule:
    """One ``OutcomeTrigger`` of a downstream deployment's current version."""

    downstream: str  # deployment name
    upstream: str
    states: tuple[str, ...]
    run_id_parameter: str = ""
    result_parameter: str = ""


@dataclass(frozen=True)
class Fired:
    """A downstream deployment triggered (or refused) by an upstream run's end."""

    deployment: str
    flow_run_id: str | None
    existing: bool = False
    refused: str = ""


def fire_outcome_triggers(tx: Tx, run: FlowRunRow) -> list[Fired]:
    """Trigger the deployments waiting on ``run`` ending in its (terminal) state."""
    if run.deployment_id is None or run.state not in TERMINAL_RUN:
        return []
    upstream = tx.session.get(DeploymentRow, run.deployment_id)
    if upstream is None:
        return []
    fired = []
    for rule in _rules_on(tx, upstream.name):
        if str(run.state) in rule.states:
            fired.append(_fire(tx, rule, run))
    return fired


def _fire(tx: Tx, rule: OutcomeRule, run: FlowRunRow) -> Fired:
    # Imported here: the use cases that end runs import this module, and deployments
    # imports theirs (creating runs) — a module-level import would be a cycle.
    from control_plane.usecases import deployments

    depth = chain_depth(run) + 1
    if depth > MAX_OUTCOME_CHAIN:
        why = (
            f"run {run.id} ends a chain of {depth - 1} outcome-triggered runs: at most "
            f"{MAX_OUTCOME_CHAIN} in a row (a cycle of outcome triggers?)"
        )
        return _refuse(tx, rule, run, why)
    parameters: dict[str, Any] = {}
    if rule.run_id_parameter:
        parameters[rule.run_id_parameter] = run.id
    if rule.result_parameter:
        parameters[rule.result_parameter] = json.loads(run.result_json) if run.result_json else None
    source = deployments.TriggerSource(
        "outcome",
        actor=f"run:{run.id}",
        detail={
            "upstream_run_id": run.id,
            "upstream_deployment": rule.upstream,
            "state": str(run.state),
            "chain_depth": depth,
        },
    )
    outcome = attempt(
        tx,
        deployments.trigger_deployment,
        rule.downstream,
        parameters,
        source=source,
        idempotency_key=f"outcome:{run.id}",
    )
    if isinstance(outcome, MeridianError):
        return _refuse(tx, rule, run, str(outcome))
    return Fired(rule.downstream, outcome.flow_run_id, outcome.existing)


def chain_depth(run: FlowRunRow) -> int:
    """How many outcome-triggered runs in a row led to ``run`` (0: it was not one)."""
    if run.trigger != "outcome":
        return 0
    depth = ((run.trigger_detail or {}).get("detail") or {}).get("chain_depth", 1)
    return depth if isinstance(depth, int) and depth > 0 else 1


def _refuse(tx: Tx, rule: OutcomeRule, run: FlowRunRow, why: str) -> Fired:
    audit.append(
        tx.session,
        actor=f"run:{run.id}",
        action="trigger.refused",
        subject=rule.downstream,
        details={
            "kind": "outcome",
            "deployment": rule.downstream,
            "upstream_run_id": run.id,
            "upstream_deployment": rule.upstream,
            "state": str(run.state),
            "reason": why,
        },
        now=tx.now,
    )
    return Fired(rule.downstream, None, refused=why)


class _VersionTriggers:
    """The outcome triggers of deployment versions already read, bounded (least recently used
    out first)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._known: OrderedDict[tuple[str, int], tuple[OutcomeTrigger, ...]] = OrderedDict()
        self._lock = threading.Lock()  # several store threads on PostgreSQL

    def of(
        self, tx: Tx, versions: Sequence[tuple[str, int]]
    ) -> dict[tuple[str, int], tuple[OutcomeTrigger, ...]]:
        found: dict[tuple[str, int], tuple[OutcomeTrigger, ...]] = {}
        with self._lock:
            for key in versions:
                if key in self._known:
                    self._known.move_to_end(key)
                    found[key] = self._known[key]
        missing = [key for key in versions if key not in found]
        for start in range(0, len(missing), _ID_CHUNK):
            chunk = missing[start : start + _ID_CHUNK]
            rows = tx.session.execute(
                select(
                    DeploymentVersionRow.deployment_id,
                    DeploymentVersionRow.version,
                    DeploymentVersionRow.spec,
                ).where(
                    tuple_(DeploymentVersionRow.deployment_id, DeploymentVersionRow.version).in_(
                        chunk
                    )
                )
            )
            for deployment_id, version, spec in rows:
                found[(deployment_id, version)] = spec_from_json(spec).triggers
        with self._lock:
            for key in missing:
                if key in found:
                    self._known[key] = found[key]
            while len(self._known) > self._size:
                self._known.popitem(last=False)
        return found


_VERSIONS = _VersionTriggers(_KNOWN_VERSIONS)


def live_triggers(tx: Tx) -> dict[str, tuple[OutcomeTrigger, ...]]:
    """The outcome triggers of every live deployment's current version, by its name."""
    rows = tx.session.execute(
        select(DeploymentRow.id, DeploymentRow.name, DeploymentRow.current_version)
        .where(DeploymentRow.deleted_at.is_(None))
        .order_by(DeploymentRow.name)
    ).all()
    triggers = _VERSIONS.of(tx, [(row.id, row.current_version) for row in rows])
    return {name: triggers.get((key, version), ()) for key, name, version in rows}


def _rules_on(tx: Tx, upstream: str) -> Iterator[OutcomeRule]:
    """The outcome triggers on ``upstream`` of every live deployment's current version (a
    paused one answers SKIPPED and audits it: ``deployment_triggers``)."""
    for name, triggers in live_triggers(tx).items():
        for trigger in triggers:
            if trigger.upstream_deployment == upstream:
                yield OutcomeRule(
                    downstream=name,
                    upstream=upstream,
                    states=trigger.states or DEFAULT_STATES,
                    run_id_parameter=trigger.run_id_parameter,
                    result_parameter=trigger.result_parameter,
                )
