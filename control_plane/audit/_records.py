"""What each audited action records. One function per action keeps the call sites in the
orchestration and auth code to one line, and every record's shape in one place.

Secrets never enter a record: join tokens appear by id only, payloads by digest only.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from control_plane.audit._chain import digest_text, format_at
from control_plane.audit._log import CLI, SYSTEM, append, token_actor
from control_plane.store.models import (
    AgentRow,
    AttemptRow,
    FlowRunRow,
    JoinTokenRow,
    StepRunRow,
    TransferRow,
)

_JOIN_TOKEN_OF = "meridian.audit.join_token_of"


def _iso(at: dt.datetime | None) -> str | None:
    return format_at(at) if at is not None else None


def token_created(session: Session, token: JoinTokenRow, *, actor: str = CLI) -> None:
    append(
        session,
        actor=actor,
        action="token.created",
        subject=token.id,
        details={
            "environment": token.environment,
            "labels": dict(token.labels or {}),
            "expires_at": _iso(token.expires_at),
        },
        now=token.created_at,
    )


def agent_enrolled(session: Session, agent: AgentRow, token_id: str) -> None:
    append(
        session,
        actor=token_actor(token_id),
        action="agent.enrolled",
        subject=agent.id,
        details={
            "agent_id": agent.id,
            "name": agent.name,
            "environment": agent.environment,
            "cert_fingerprint": agent.cert_fingerprint,
            "pinned_labels": dict(agent.pinned_labels or {}),
            "join_token_id": token_id,
        },
        now=agent.enrolled_at,
    )


def run_triggered(session: Session, run: FlowRunRow, *, actor: str = CLI) -> None:
    append(
        session,
        actor=actor,
        action="run.triggered",
        subject=run.id,
        details={
            "flow": run.flow_name,
            "entrypoint": run.entrypoint,
            "trigger": run.trigger,
            "parameters_digest": digest_text(run.parameters_json),
            "bundle_sha256": run.bundle_sha256,
            # Only scoped runs say so, so unscoped records keep their established shape.
            **({"scope": list(run.scope)} if run.scope else {}),
        },
        now=run.created_at,
    )


def run_changed(
    session: Session,
    action: str,
    run: FlowRunRow,
    now: dt.datetime,
    *,
    actor: str = CLI,
    **details: Any,
) -> None:
    """``run.cancelled`` / ``run.resumed`` / ``run.retried`` / ``run.approved`` /
    ``run.rejected``: who asked, and what came of it."""
    append(
        session,
        actor=actor,
        action=action,
        subject=run.id,
        details={"flow": run.flow_name, **details},
        now=now,
    )


def attempt_finished(
    session: Session,
    attempt: AttemptRow,
    step: StepRunRow,
    *,
    result_json: str,
    actor: str = SYSTEM,
) -> None:
    """The provenance of one attempt: who ran it where, on what code and data, and how it
    ended. The agent's identity is read from the agents table, not from anything the agent
    said in its report."""
    assert attempt.ended_at is not None
    run = session.get(FlowRunRow, attempt.flow_run_id)
    agent = session.get(AgentRow, attempt.agent_id) if attempt.agent_id else None
    error = attempt.error
    details: dict[str, Any] = {
        "flow_run_id": attempt.flow_run_id,
        "step_run_id": step.id,
        "step_key": step.key,
        "attempt": attempt.number,
        "outcome": attempt.state,
        "error_class": error.error_class if error else "",
        "error_type": error.type if error else "",
        "exit_code": attempt.exit_code,
        "agent": _agent_identity(session, agent),
        "environment": attempt.environment,
        "provider": attempt.provider,
        "resource_id": attempt.resource_id,
        "bundle_sha256": run.bundle_sha256 if run is not None else "",
        "inputs_digest": step.inputs_digest,
        "result_digest": digest_text(result_json) if attempt.state == "SUCCEEDED" else "",
        "queued_at": _iso(attempt.queued_at),
        "assigned_at": _iso(attempt.assigned_at),
        "started_at": _iso(attempt.started_at),
        "ended_at": _iso(attempt.ended_at),
    }
    append(
        session,
        actor=actor,
        action="attempt.finished",
        subject=attempt.id,
        details=details,
        now=attempt.ended_at,
    )


def _agent_identity(session: Session, agent: AgentRow | None) -> dict[str, Any] | None:
    if agent is None:
        return None  # never assigned (cancelled or unschedulable while queued)
    # Once per agent and transaction: a report batch finishes many attempts of one agent.
    known: dict[str, str | None] = session.info.setdefault(_JOIN_TOKEN_OF, {})
    if agent.id not in known:
        known[agent.id] = session.scalar(
            select(JoinTokenRow.id).where(JoinTokenRow.used_by_agent_id == agent.id).limit(1)
        )
    token_id = known[agent.id]
    return {
        "agent_id": agent.id,
        "name": agent.name,
        "cert_fingerprint": agent.cert_fingerprint,
        "join_token_id": token_id or "",
        "labels": dict(agent.labels or {}),
    }


def transfer_ended(session: Session, transfer: TransferRow, *, actor: str) -> None:
    """``result.transferred`` / ``result.transfer_failed``: a stored result (or part of it)
    left its environment: where from and to, how many bytes, which object, who asked."""
    assert transfer.ended_at is not None
    append(
        session,
        actor=actor,
        action="result.transferred" if transfer.state == "COMPLETED" else "result.transfer_failed",
        subject=transfer.flow_run_id,
        details={
            "transfer_id": transfer.id,
            "from_environment": transfer.from_environment,
            "to_environment": transfer.to_environment,
            "store": transfer.store,
            "uri": transfer.uri,
            "sha256": transfer.sha256,
            "size": transfer.size,
            "bytes": transfer.bytes,
            "flow_run_id": transfer.flow_run_id,
            "step_key": transfer.step_key,
            "attempt_id": transfer.attempt_id or "",
            "producer_run_id": transfer.producer_run_id,
            "producer_step_key": transfer.producer_step_key,
            "requested_by": transfer.requested_by,
            "method": transfer.method,  # relay | presigned (never the URL itself)
            **({"error": transfer.error} if transfer.error else {}),
        },
        now=transfer.ended_at,
    )


def transfer_refused(
    session: Session, *, actor: str, run_id: str, now: dt.datetime, **details: Any
) -> None:
    """``result.transfer_refused``: a request for a stored result's bytes that was refused
    (a residency rule, or a reference the asker may not read): who asked, for what, why."""
    append(
        session,
        actor=actor,
        action="result.transfer_refused",
        subject=run_id,
        details=details,
        now=now,
    )
