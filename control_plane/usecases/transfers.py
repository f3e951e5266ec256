"""Result transfers between environments: who may have a stored result's bytes, the ledger row
of each transfer and its audit record (docs/results.md, decision 0020).

An agent gets the bytes of a reference only for an attempt it holds (its fencing token
current), only when that reference is one of the attempt's listed inputs, only when it is a
result this control plane recorded from a finished report, and only when the producing
environment's residency rule lets the agent read it. A client (``meridian results get``) gets
a step's stored result when it may see the run, never when the producing environment has a
residency rule: a laptop is in no environment. A refused request that looks like a forgery or
breaks a rule is audited; the refusal is returned (not raised) so its record commits.

Every transfer is a ``TransferRow``: RUNNING when the relay starts, COMPLETED or FAILED with
the bytes that crossed when it ends, in the same transaction as its audit record, and how they
moved (``method``): through the relay, or from a presigned URL the producing site handed the
consumer (counted as crossed when the URL is handed over; the URL is never recorded).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from control_plane import audit
from control_plane.store.models import (
    AgentRow,
    AttemptRow,
    FlowRunRow,
    StepRunRow,
    TransferRow,
)
from control_plane.store.queries import covered_by
from control_plane.store.tx import Tx
from control_plane.usecases.environments import rules_for, stored_refs
from meridian.core.errors import ConflictError, MeridianError, NotFound, PermissionDenied
from meridian.core.residency import ResidencyRefused, ResidencyRule, may_read
from meridian.core.resultref import ResultRef
from meridian.core.states import SLOT_HOLDING

RUNNING, COMPLETED, FAILED = "RUNNING", "COMPLETED", "FAILED"
RELAY, PRESIGNED = "relay", "presigned"
METHODS = frozenset({RELAY, PRESIGNED})
MAX_ERROR = 2000
# Step runs sharing one recorded reference (a result reused by cached steps) looked at to
# find the one that produced it.
MAX_RECORDED_MATCHES = 50
MAX_LISTED = 1000


@dataclass(frozen=True)
class AgentFetch:
    """What a consuming agent asked for: ``ref`` for its attempt ``attempt_id``."""

    agent_id: str
    attempt_id: str
    fencing_token: int
    ref: ResultRef
    offset: int


@dataclass(frozen=True)
class TransferPlan:
    """An authorized transfer (its row is RUNNING once ``producer_agent_id`` is set)."""

    transfer_id: str
    ref: ResultRef  # as the control plane recorded it
    offset: int
    flow_run_id: str
    step_key: str
    attempt_id: str | None
    to_environment: str  # "" for a client download
    producer_run_id: str
    producer_step_key: str
    requested_by: str
    producer_agent_id: str | None


@dataclass(frozen=True)
class Refused:
    """A refusal that was audited; the caller raises ``error`` after the commit."""

    error: MeridianError


@dataclass(frozen=True)
class TransferTotal:
    from_environment: str
    to_environment: str
    bytes: int
    transfers: int


@dataclass(frozen=True)
class TransferListing:
    transfers: list[TransferRow]
    totals: list[TransferTotal]


# ---- agents ---------------------------------------------------------------------------


def begin_agent_transfer(
    tx: Tx, fetch: AgentFetch, transfer_id: str, producer_agent_id: str | None
) -> TransferPlan | Refused:
    """Authorize ``fetch``; with a producer to ask, record the transfer as RUNNING."""
    session = tx.session
    attempt, step = _held_attempt(session, fetch)
    actor = audit.agent_actor(fetch.agent_id)

    def refuse(error: MeridianError) -> Refused:
        audit.records.transfer_refused(
            session,
            actor=actor,
            run_id=attempt.flow_run_id,
            now=tx.now,
            step_key=step.key,
            attempt_id=attempt.id,
            from_environment=fetch.ref.environment,
            store=fetch.ref.store,
            uri=fetch.ref.uri,
            sha256=fetch.ref.sha256,
            reason=str(error),
        )
        return Refused(error)

    if not any(_same_object(fetch.ref, listed) for listed in stored_refs(step.input_refs_json)):
        return refuse(
            PermissionDenied(
                f"result {fetch.ref.uri} is not among the inputs of attempt {attempt.id}; an "
                "agent fetches only the references its attempt's inputs name"
            )
        )
    producer = recorded_producer(session, fetch.ref)
    if producer is None:
        return refuse(
            PermissionDenied(
                f"result {fetch.ref.uri} (sha256 {fetch.ref.sha256[:12]}) was not recorded by "
                "any step run of this control plane"
            )
        )
    agent = session.get(AgentRow, fetch.agent_id)
    if agent is None:
        raise PermissionDenied(f"agent {fetch.agent_id} is not enrolled here")
    labels = {str(k): str(v) for k, v in (agent.labels or {}).items()}
    pinned = {str(k): str(v) for k, v in (agent.pinned_labels or {}).items()}
    decision = may_read(
        _rule(session, fetch.ref.environment),
        fetch.ref.environment,
        agent.environment,
        labels,
        pinned,
    )
    if not decision.allowed:
        return refuse(ResidencyRefused(decision.message))
    plan = TransferPlan(
        transfer_id=transfer_id,
        ref=fetch.ref,
        offset=fetch.offset,
        flow_run_id=attempt.flow_run_id,
        step_key=step.key,
        attempt_id=attempt.id,
        to_environment=agent.environment,
        producer_run_id=producer.flow_run_id,
        producer_step_key=producer.key,
        requested_by=fetch.agent_id,
        producer_agent_id=producer_agent_id,
    )
    if producer_agent_id is not None:
        _insert(tx, plan)
    return plan


def _held_attempt(session: Session, fetch: AgentFetch) -> tuple[AttemptRow, StepRunRow]:
    attempt = session.get(AttemptRow, fetch.attempt_id)
    if attempt is None or attempt.agent_id != fetch.agent_id:
        raise PermissionDenied(f"this agent holds no attempt {fetch.attempt_id[:64]!r}")
    if attempt.fencing_token != fetch.fencing_token:
        raise ConflictError(
            f"attempt {attempt.id} is held with fencing token {attempt.fencing_token}, not "
            f"{fetch.fencing_token}; a stale holder fetches nothing"
        )
    if attempt.state not in SLOT_HOLDING:
        raise ConflictError(
            f"attempt {attempt.id} is {attempt.state}; only an attempt that is assigned or "
            "running fetches its inputs"
        )
    step = session.get(StepRunRow, attempt.step_run_id)
    assert step is not None
    return attempt, step


def _same_object(a: ResultRef, b: ResultRef) -> bool:
    return (a.sha256, a.uri, a.environment, a.store) == (b.sha256, b.uri, b.environment, b.store)


def recorded_producer(session: Session, ref: ResultRef) -> StepRunRow | None:
    """The step run whose finished report recorded exactly ``ref`` (the earliest, so a step
    that reused it from the cache does not hide the one that produced it)."""
    rows = session.scalars(
        select(StepRunRow)
        # The exact reference (stored in its canonical JSON form), not only its digest: the
        # same bytes produced by many runs are many objects, and all must stay findable.
        .where(
            StepRunRow.result_ref_sha256 == ref.sha256,
            StepRunRow.result_ref_json == ref.to_json(),
        )
        .order_by(StepRunRow.created_at)
        .limit(MAX_RECORDED_MATCHES)
    )
    for row in rows:
        try:
            if row.result_ref_json and ResultRef.from_json(row.result_ref_json) == ref:
                return row
        except MeridianError:
            continue
    return None


def _rule(session: Session, environment: str) -> ResidencyRule | None:
    return rules_for(session, [environment]).get(environment)


# ---- clients --------------------------------------------------------------------------


def begin_client_transfer(
    tx: Tx,
    run_id: str,
    step_key: str,
    offset: int,
    transfer_id: str,
    producer_agent_id: str | None,
) -> TransferPlan | Refused:
    """Authorize a client's download of step ``step_key``'s stored result (the caller already
    checked the run is visible); with a producer to ask, record the transfer as RUNNING."""
    session = tx.session
    step = _step(session, run_id, step_key)
    ref = _stored_ref(step)
    rule = _rule(session, ref.environment)
    if rule is not None:
        error = ResidencyRefused(
            f"data residency: results of environment {ref.environment!r} may only be read in "
            f"environments matching {str(rule)!r}; a download to a client is outside every "
            "environment, so read it from a step that runs where the rule allows"
        )
        audit.records.transfer_refused(
            session,
            actor=tx.actor,
            run_id=run_id,
            now=tx.now,
            step_key=step_key,
            from_environment=ref.environment,
            store=ref.store,
            uri=ref.uri,
            sha256=ref.sha256,
            reason=str(error),
        )
        return Refused(error)
    if offset > ref.size:
        raise ConflictError(f"offset {offset} is past the end of the result ({ref.size} bytes)")
    producer = recorded_producer(session, ref)
    plan = TransferPlan(
        transfer_id=transfer_id,
        ref=ref,
        offset=offset,
        flow_run_id=run_id,
        step_key=step_key,
        attempt_id=None,
        to_environment="",
        producer_run_id=producer.flow_run_id if producer is not None else run_id,
        producer_step_key=producer.key if producer is not None else step_key,
        requested_by=tx.actor,
        producer_agent_id=producer_agent_id,
    )
    if producer_agent_id is not None:
        _insert(tx, plan)
    return plan


def stored_result(session: Session, run_id: str, step_key: str) -> ResultRef:
    """The reference of step ``step_key``'s result in run ``run_id``."""
    return _stored_ref(_step(session, run_id, step_key))


def _step(session: Session, run_id: str, step_key: str) -> StepRunRow:
    step = session.scalar(
        select(StepRunRow).where(StepRunRow.flow_run_id == run_id, StepRunRow.key == step_key)
    )
    if step is None:
        raise NotFound(f"run {run_id} has no step {step_key[:200]!r}")
    return step


def _stored_ref(step: StepRunRow) -> ResultRef:
    if not step.result_ref_json:
        held = (
            "its result is inline JSON (see `meridian runs show`)"
            if step.result_json
            else (f"it is {step.state} and has no stored result")
        )
        raise ConflictError(f"step {step.key!r} has no result kept at its site: {held}")
    return ResultRef.from_json(step.result_ref_json)


# ---- the ledger -----------------------------------------------------------------------


def _insert(tx: Tx, plan: TransferPlan) -> None:
    if plan.offset > 0:
        _credit_interrupted(tx, plan)
    tx.session.add(
        TransferRow(
            id=plan.transfer_id,
            flow_run_id=plan.flow_run_id,
            step_key=plan.step_key,
            attempt_id=plan.attempt_id,
            from_environment=plan.ref.environment,
            to_environment=plan.to_environment,
            store=plan.ref.store,
            uri=plan.ref.uri,
            sha256=plan.ref.sha256,
            size=plan.ref.size,
            bytes=0,
            state=RUNNING,
            error="",
            producer_run_id=plan.producer_run_id,
            producer_step_key=plan.producer_step_key,
            requested_by=plan.requested_by,
            method=RELAY,
            started_at=tx.now,
            ended_at=None,
        )
    )


def _credit_interrupted(tx: Tx, plan: TransferPlan) -> None:
    """A control plane that stopped mid-transfer could not record the bytes it had relayed;
    the consumer's resume offset says how many arrived. What the earlier rows of the same
    fetch do not account for is credited to the last interrupted one, so the ledger's egress
    counts every byte that crossed (the audit record of that row keeps what was known then)."""
    who = (
        TransferRow.attempt_id == plan.attempt_id
        if plan.attempt_id
        else TransferRow.requested_by == plan.requested_by
    )
    earlier = tx.session.scalars(
        select(TransferRow)
        .where(who, TransferRow.uri == plan.ref.uri, TransferRow.sha256 == plan.ref.sha256)
        .order_by(TransferRow.started_at)
    ).all()
    # Only this fetch's rows: those after the last one that completed (an earlier download
    # of the same object by the same client is another fetch).
    completed = [i for i, row in enumerate(earlier) if row.state == COMPLETED]
    if completed:
        earlier = earlier[completed[-1] + 1 :]
    deficit = plan.offset - sum(row.bytes for row in earlier)
    interrupted = [r for r in earlier if r.state == FAILED and r.error == INTERRUPTED]
    if deficit > 0 and interrupted:
        interrupted[-1].bytes += deficit


INTERRUPTED = "the control plane stopped during the transfer"


def finish_transfer(
    tx: Tx, transfer_id: str, sent: int, error: str = "", method: str = RELAY
) -> None:
    """End a RUNNING transfer: COMPLETED when ``error`` is empty, else FAILED with it, and its
    audit record; ``method`` says how the bytes moved. Ending one twice changes nothing."""
    if method not in METHODS:
        raise ValueError(f"unknown transfer method {method!r}")
    row = tx.session.get(TransferRow, transfer_id)
    if row is None or row.state != RUNNING:
        return
    row.method = method
    row.state = FAILED if error else COMPLETED
    row.error = error[:MAX_ERROR]
    row.bytes = sent
    row.ended_at = tx.now
    audit.records.transfer_ended(tx.session, row, actor=_actor(row))


def fail_interrupted_transfers(
    tx: Tx, started_before: dt.datetime, open_ids: frozenset[str]
) -> int:
    """Transfers left RUNNING by a control plane that stopped mid-way: FAILED (their relay is
    gone with that process). Those this process still relays (``open_ids``) are left alone."""
    rows = tx.session.scalars(
        select(TransferRow).where(
            TransferRow.state == RUNNING, TransferRow.started_at < started_before
        )
    ).all()
    ended = 0
    for row in rows:
        if row.id in open_ids:
            continue
        row.state, row.ended_at = FAILED, tx.now
        row.error = INTERRUPTED
        audit.records.transfer_ended(tx.session, row, actor=audit.SYSTEM)
        ended += 1
    return ended


def _actor(row: TransferRow) -> str:
    # An agent's transfer names the attempt it fed; a client's names no attempt, and its
    # requester is already an audit actor (the API token).
    return audit.agent_actor(row.requested_by) if row.attempt_id else row.requested_by


# ---- reading --------------------------------------------------------------------------


def list_transfers(
    session: Session,
    *,
    since: dt.datetime | None,
    run_id: str,
    limit: int,
    scope: Sequence[str] = (),
) -> TransferListing:
    """Transfers newest first (at most ``limit``), and the bytes of the COMPLETED ones summed
    per (from, to) pair; ``scope``: only runs a caller scoped to those environments may see."""
    conditions = []
    if since is not None:
        conditions.append(TransferRow.started_at >= since)
    if run_id:
        conditions.append(TransferRow.flow_run_id == run_id)
    if scope:
        visible = select(FlowRunRow.id).where(covered_by(session, scope))
        conditions.append(TransferRow.flow_run_id.in_(visible))
    rows = session.scalars(
        select(TransferRow)
        .where(*conditions)
        .order_by(TransferRow.started_at.desc(), TransferRow.id)
        .limit(max(1, min(limit, MAX_LISTED)))
    ).all()
    sums = session.execute(
        select(
            TransferRow.from_environment,
            TransferRow.to_environment,
            # Egress: every byte that crossed, a failed transfer's too; transfers: completed.
            func.coalesce(func.sum(TransferRow.bytes), 0),
            func.coalesce(func.sum(case((TransferRow.state == COMPLETED, 1), else_=0)), 0),
        )
        .where(TransferRow.state != RUNNING, *conditions)
        .group_by(TransferRow.from_environment, TransferRow.to_environment)
        .order_by(TransferRow.from_environment, TransferRow.to_environment)
    ).all()
    totals = [TransferTotal(str(f), str(t), int(b), int(n)) for f, t, b, n in sums]
    return TransferListing(list(rows), totals)
