"""Operators act on agents: revoke an identity (its attempts are lost at once) or drain it."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from control_plane import audit
from control_plane.store.models import AgentRow, AttemptRow, StepRunRow
from control_plane.store.tx import Tx
from control_plane.usecases.attempts import finish_attempt
from meridian.core.errorinfo import ErrorClass, ErrorInfo
from meridian.core.errors import NotFound, ValidationError
from meridian.core.states import SLOT_HOLDING, AttemptState


def resolve_agent(session: Session, ref: str, environments: Sequence[str] = ()) -> AgentRow:
    """An agent by id, unique id prefix (4+ characters) or unique name; a caller limited to
    ``environments`` cannot act on (or learn about) agents elsewhere."""
    agent = _resolve(session, ref)
    if environments and agent.environment not in environments:
        raise NotFound(f"no agent has the id, id prefix or name {ref.strip()!r}")
    return agent


def _resolve(session: Session, ref: str) -> AgentRow:
    ref = ref.strip()
    if not ref:
        raise ValidationError("name the agent by id, id prefix or name")
    agent = session.get(AgentRow, ref)
    if agent is not None:
        return agent
    by_name = session.scalars(select(AgentRow).where(AgentRow.name == ref).limit(2)).all()
    by_prefix = (
        session.scalars(
            select(AgentRow).where(AgentRow.id.startswith(ref, autoescape=True)).limit(2)
        ).all()
        if len(ref) >= 4
        else []
    )
    matches = {a.id: a for a in (*by_name, *by_prefix)}
    if not matches:
        raise NotFound(f"no agent has the id, id prefix or name {ref!r}")
    if len(matches) > 1:
        raise ValidationError(f"{ref!r} names more than one agent; use its id")
    return next(iter(matches.values()))


def revoke_agent(tx: Tx, ref: str, reason: str, environments: Sequence[str] = ()) -> AgentRow:
    """Refuse the agent's certificate from now on; the attempts it holds are lost (and retried
    elsewhere by their step's policy) because nothing it reports will be accepted again."""
    session, now = tx.session, tx.now
    agent = resolve_agent(session, ref, environments)
    if agent.revoked_at is not None:
        return agent
    agent.revoked_at = now
    agent.status = "revoked"
    message = f"agent {agent.name} in {agent.environment} was revoked" + (
        f": {reason}" if reason else ""
    )
    held = session.scalars(
        select(AttemptRow).where(
            AttemptRow.agent_id == agent.id, AttemptRow.state.in_(list(SLOT_HOLDING))
        )
    ).all()
    for attempt in held:
        step = session.get(StepRunRow, attempt.step_run_id)
        assert step is not None
        error = ErrorInfo(ErrorClass.LOST_AGENT, "meridian.AgentRevoked", message)
        finish_attempt(tx, attempt, step, AttemptState.LOST, error=error)
    audit.append(
        session,
        actor=audit.CLI,
        action="agent.revoked",
        subject=agent.id,
        details={
            "environment": agent.environment,
            "fingerprint": agent.cert_fingerprint,
            "reason": reason,
            "attempts_lost": len(held),
        },
        now=now,
    )
    return agent


def drain_agent(tx: Tx, ref: str, reason: str, environments: Sequence[str] = ()) -> AgentRow:
    """Stop new assignments to the agent; what it runs finishes normally."""
    session, now = tx.session, tx.now
    agent = resolve_agent(session, ref, environments)
    if agent.revoked_at is not None:
        raise ValidationError(f"agent {agent.name} is revoked")
    if agent.drain_requested_at is None:
        agent.drain_requested_at = now
        audit.append(
            session,
            actor=audit.CLI,
            action="agent.drained",
            subject=agent.id,
            details={"environment": agent.environment, "reason": reason},
            now=now,
        )
    if agent.status in ("connected", "disconnected"):
        agent.status = "draining"
    return agent
