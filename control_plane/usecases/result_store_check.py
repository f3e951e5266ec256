"""At submission: a step that names a result store (``@step(result_store=...)``) must have an
agent that can keep its result.

Agents advertise their stores in their Hello and the control plane keeps them only in memory,
per connected session (``scheduler.registry``), not in the store: the caller (the
``SubmitSteps`` servicer) passes what the registry knows. The use case reads the enrolled
agents matching each such step's target and provider; when every one of them is connected
(its stores are known) and none advertised the store, the submission is refused. When one of
them is not connected (it may have the store) or none matches yet, the step is accepted and
the scheduler assigns it only to an agent that has the store (it waits until then, saying so).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from sqlalchemy import select

from control_plane.orchestration.matching import AgentSlot, could_run, store_refusal
from control_plane.orchestration.values import StepSubmission
from control_plane.store.models import AgentRow
from control_plane.store.tx import Tx
from meridian.core.errors import ValidationError
from meridian.core.selectors import parse_selector


def check_result_stores(
    tx: Tx, subs: Sequence[StepSubmission], advertised: Mapping[str, Collection[str]] | None
) -> None:
    """Refuse the submission when a call names a store no agent that could run it has.

    ``advertised``: the stores of each connected agent, by agent id (None: unknown, nothing
    is checked). Calls that name no store cost nothing.

    Raises:
        ValidationError: naming the step, the store and the stores of the matching agents.
    """
    needs: dict[tuple[str, str, str], str] = {}  # (target, provider, store) -> first key
    for sub in subs:
        if sub.spec.result_store:
            needs.setdefault((sub.spec.target, sub.spec.provider, sub.spec.result_store), sub.key)
    if advertised is None or not needs:
        return
    agents = _enrolled(tx, advertised)
    for (target, provider, result_store), key in needs.items():
        selector = parse_selector(target)
        candidates = [slot for slot in agents if could_run(selector, provider, slot)]
        if any(slot.agent_id not in advertised for slot in candidates):
            continue  # an agent not connected now may have the store: let it wait
        message = store_refusal(key, result_store, candidates)
        if message is not None:
            raise ValidationError(message)


def _enrolled(tx: Tx, advertised: Mapping[str, Collection[str]]) -> list[AgentSlot]:
    """Every enrolled, not revoked agent as a slot (room ignored) with the stores it
    advertised if it is connected."""
    rows = tx.session.execute(
        select(
            AgentRow.id, AgentRow.name, AgentRow.environment, AgentRow.labels, AgentRow.providers
        ).where(AgentRow.revoked_at.is_(None))
    )
    return [
        AgentSlot(
            agent_id=agent_id,
            name=name,
            environment=environment,
            labels={str(k): str(v) for k, v in (labels or {}).items()},
            providers=frozenset(str(p) for p in providers or ()),
            capacity=0,
            in_use=0,
            result_stores=frozenset(advertised.get(agent_id, ())),
        )
        for agent_id, name, environment, labels, providers in rows
    ]
