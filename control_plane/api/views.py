"""Stored rows -> protobuf messages for the read side of the control API."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from control_plane.api.readmodels import (
    AgentLike,
    ApprovalLike,
    AttemptLike,
    AuditRecordLike,
    EventViewLike,
    LogLineLike,
    RunLike,
    RunViewLike,
    StepLike,
    TransferLike,
)
from control_plane.audit import VerifyReport
from control_plane.orchestration.fleet import HeartbeatPolicy
from control_plane.orchestration.values import SubmittedStep
from control_plane.scheduler.housekeeping import CollectReport
from control_plane.scheduler.registry import AgentSession
from control_plane.telemetry.fleet import agent_status, last_heard
from control_plane.usecases.environments import EnvironmentPolicy
from meridian.core.convert import error_to_proto, ms_from_time
from meridian.core.kinds import EventKind
from meridian.core.states import TERMINAL_RUN, TERMINAL_STEP, AttemptState, StepState
from protos.meridian.v1 import common_pb2, control_pb2

# The server's defaults; the servicers pass the configured policy.
RUN_END_KINDS = frozenset(EventKind.entered(state) for state in TERMINAL_RUN)
# Integer arithmetic from the epoch: a float timestamp would round away microseconds.
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def approval_info(approval: ApprovalLike) -> control_pb2.ApprovalInfo:
    return control_pb2.ApprovalInfo(
        flow_run_id=approval.flow_run_id,
        key=approval.key,
        message=approval.message,
        state=approval.state,
        requested_at_unix_ms=ms_from_time(approval.requested_at),
        decided_at_unix_ms=ms_from_time(approval.decided_at),
        decided_by=approval.decided_by,
        reason=approval.reason,
        deadline_unix_ms=ms_from_time(approval.deadline),
    )


def approval_state(approval: ApprovalLike, run_state: str) -> control_pb2.ApprovalState:
    return control_pb2.ApprovalState(approval=approval_info(approval), run_state=run_state)


def run_update(view: EventViewLike) -> control_pb2.RunUpdate:
    event, step = view.event, view.step
    update = control_pb2.RunUpdate(
        event_id=event.id,
        at_unix_ms=ms_from_time(event.created_at),
        kind=event.kind,
        step_key=event.step_key or "",
        step_run_id=event.step_run_id or "",
        attempt_id=event.attempt_id or "",
        message=event.message,
        state=event.to_state or "",
        environment=str((event.details or {}).get("environment", ""))[:253],
    )
    if step is not None:
        update.step_outcome.CopyFrom(
            control_pb2.StepOutcome(
                step_run_id=step.id,
                key=step.key,
                state=step.state,
                result_json=step.result_json or "",
                error=error_to_proto(step.error),
                result_ref_json=step.result_ref_json or "",
            )
        )
    if view.approval is not None:
        update.approval.CopyFrom(approval_info(view.approval))
    if event.kind in RUN_END_KINDS:
        update.run_state = event.to_state or ""
    return update


def update_batches(
    views: Sequence[EventViewLike], max_bytes: int
) -> Iterator[control_pb2.RunUpdate]:
    """The updates of ``views`` in event order, packed into batch messages of at most
    ``max_bytes`` each (``RunUpdate.batch``); an update larger than that is sent alone."""
    batch = control_pb2.RunUpdate()
    size = 0
    for view in views:
        update = run_update(view)
        update_size = update.ByteSize() + 8  # the field's tag and length prefix
        if size and size + update_size > max_bytes:
            yield batch
            batch, size = control_pb2.RunUpdate(), 0
        batch.batch.append(update)
        size += update_size
    if size:
        yield batch


def _attempt(
    attempt: AttemptLike, step: StepLike, names: Mapping[str, str]
) -> control_pb2.AttemptDetail:
    failed = attempt.state not in (
        AttemptState.SUCCEEDED,
        AttemptState.QUEUED,
        AttemptState.ASSIGNED,
        AttemptState.RUNNING,
    )
    return control_pb2.AttemptDetail(
        attempt_id=attempt.id,
        number=attempt.number,
        state=attempt.state,
        environment=attempt.environment or "",
        agent_id=attempt.agent_id or "",
        agent_name=names.get(attempt.agent_id or "", ""),
        provider=attempt.provider,
        resource_id=attempt.resource_id or "",
        fencing_token=attempt.fencing_token,
        queued_at_unix_ms=ms_from_time(attempt.queued_at),
        started_at_unix_ms=ms_from_time(attempt.started_at),
        ended_at_unix_ms=ms_from_time(attempt.ended_at),
        error=error_to_proto(attempt.error),
        exit_code=attempt.exit_code or 0,
        recovered=failed and step.state == StepState.COMPLETED,
    )


def run_detail(view: RunViewLike) -> control_pb2.RunDetail:
    run = view.run
    return control_pb2.RunDetail(
        flow_run_id=run.id,
        flow_name=run.flow_name,
        entrypoint=run.entrypoint,
        trigger=run.trigger,
        parameters_json=run.parameters_json,
        bundle_sha256=run.bundle_sha256,
        state=run.state,
        created_at_unix_ms=ms_from_time(run.created_at),
        started_at_unix_ms=ms_from_time(run.started_at),
        ended_at_unix_ms=ms_from_time(run.ended_at),
        result_json=run.result_json or "",
        error=error_to_proto(run.error),
        retry_of=run.retry_of or "",
        resumed_at_unix_ms=ms_from_time(run.resumed_at),
        **_deployment_fields(run),
        trigger_detail_json=json.dumps(run.trigger_detail) if run.trigger_detail else "",
        parent_key=run.parent_key or "",
        children=[run_summary(child, 0, 0) for child in view.children],
        steps=[
            control_pb2.StepRunDetail(
                step_run_id=step.id,
                key=step.key,
                name=step.name,
                state=step.state,
                target=step.spec.target,
                provider=step.spec.provider,
                inputs_digest=step.inputs_digest,
                result_json=step.result_json or "",
                error=error_to_proto(step.error),
                created_at_unix_ms=ms_from_time(step.created_at),
                ended_at_unix_ms=ms_from_time(step.ended_at),
                attempts=[
                    _attempt(a, step, view.agent_names) for a in view.attempts.get(step.id, [])
                ],
                reused_from_run_id=step.cached_from_run_id or "",
                reused_from_step_key=step.cached_from_step_key or "",
                result_ref_json=step.result_ref_json or "",
            )
            for step in view.steps
        ],
        events=[
            control_pb2.RunEvent(
                event_id=e.id,
                at_unix_ms=ms_from_time(e.created_at),
                kind=e.kind,
                step_key=e.step_key or "",
                attempt_id=e.attempt_id or "",
                from_state=e.from_state or "",
                to_state=e.to_state or "",
                message=e.message,
            )
            for e in view.events
        ],
        approvals=[approval_info(a) for a in view.approvals],
        transfers=[transfer_info(t) for t in view.transfers],
    )


def transfer_info(row: TransferLike) -> control_pb2.TransferInfo:
    return control_pb2.TransferInfo(
        transfer_id=row.id,
        flow_run_id=row.flow_run_id,
        step_key=row.step_key,
        attempt_id=row.attempt_id or "",
        from_environment=row.from_environment,
        to_environment=row.to_environment,
        store=row.store,
        bytes=row.bytes,
        sha256=row.sha256,
        state=row.state,
        error=row.error,
        started_at_unix_ms=ms_from_time(row.started_at),
        ended_at_unix_ms=ms_from_time(row.ended_at),
        producer_run_id=row.producer_run_id,
        producer_step_key=row.producer_step_key,
        method=row.method,
    )


def transfers_page(
    rows: Sequence[TransferLike], totals: Sequence[tuple[str, str, int, int]]
) -> control_pb2.ListTransfersResponse:
    """Transfers newest first, and (from, to, bytes, transfers) sums of the completed ones."""
    return control_pb2.ListTransfersResponse(
        transfers=[transfer_info(t) for t in rows],
        totals=[
            control_pb2.TransferTotal(from_environment=f, to_environment=t, bytes=b, transfers=n)
            for f, t, b, n in totals
        ],
    )


def submitted_step(step: SubmittedStep) -> control_pb2.SubmittedStep:
    answer = control_pb2.SubmittedStep(
        key=step.key,
        step_run_id=step.step_run_id,
        state=step.state,
        existing=step.existing,
        outcome_omitted=step.outcome_omitted,
    )
    if step.state in TERMINAL_STEP and not step.outcome_omitted:
        answer.outcome.CopyFrom(
            control_pb2.StepOutcome(
                step_run_id=step.step_run_id,
                key=step.key,
                state=step.state,
                result_json=step.result_json,
                error=error_to_proto(step.error),
                result_ref_json=step.result_ref_json,
            )
        )
    return answer


def submit_answer(
    submitted: Sequence[SubmittedStep], singles: int, batch_sizes: Sequence[int]
) -> control_pb2.SubmitStepsResponse:
    """The answer shaped like the request: one ``SubmittedStep`` per single submission, then
    per batch its step run ids and the details of its calls that were submitted before."""
    answer = control_pb2.SubmitStepsResponse(steps=[submitted_step(s) for s in submitted[:singles]])
    start = singles
    for size in batch_sizes:
        calls = submitted[start : start + size]
        start += size
        answer.batches.append(
            control_pb2.StepBatchAnswer(
                step_run_ids=[s.step_run_id for s in calls],
                # Calls that reused a cached result are answered here too, with their outcome.
                existing=[
                    submitted_step(s) for s in calls if s.existing or s.state in TERMINAL_STEP
                ],
            )
        )
    return answer


def environment_info(
    policy: EnvironmentPolicy, connected: Sequence[AgentSession]
) -> control_pb2.EnvironmentInfo:
    """One environment: its rule and agents from the store; connected agents, the result
    stores they advertised and their default store from the registry (``connected``: the
    sessions of this environment). Agents that disagree on the default: the most common one."""
    defaults = Counter(s.default_result_store for s in connected if s.default_result_store)
    default = min(defaults, key=lambda name: (-defaults[name], name)) if defaults else ""
    return control_pb2.EnvironmentInfo(
        name=policy.name,
        residency=policy.residency,
        residency_pinned_labels_only=policy.pinned_labels_only,
        agents=policy.agents,
        connected=len(connected),
        result_stores=sorted({name for s in connected for name in s.result_stores}),
        default_result_store=default,
    )


def run_to_execute(
    run: RunLike, watch_after_event_id: int = 0, runner_token: str = "", *, hosted: bool = False
) -> control_pb2.RunToExecute:
    return control_pb2.RunToExecute(
        watch_after_event_id=watch_after_event_id,
        runner_token=runner_token,
        hosted=hosted,
        flow_run_id=run.id,
        flow_name=run.flow_name,
        entrypoint=run.entrypoint,
        parameters_json=run.parameters_json,
        bundle_sha256=run.bundle_sha256,
        state=run.state,
    )


def run_summary(run: RunLike, total: int, failed: int) -> control_pb2.RunSummary:
    return control_pb2.RunSummary(
        flow_run_id=run.id,
        flow_name=run.flow_name,
        state=run.state,
        created_at_unix_ms=ms_from_time(run.created_at),
        ended_at_unix_ms=ms_from_time(run.ended_at),
        steps_total=total,
        steps_failed=failed,
        trigger=run.trigger,
        **_deployment_fields(run),
    )


def _deployment_fields(run: RunLike) -> dict[str, Any]:
    """A deployment run's name (as it was when fired), version and parent run."""
    detail = run.trigger_detail or {}
    return {
        "deployment": str(detail.get("deployment", "")),
        "deployment_version": run.deployment_version or 0,
        "parent_run_id": run.parent_run_id or "",
    }


def logs_page(rows: Sequence[LogLineLike], after_id: int) -> control_pb2.GetLogsResponse:
    return control_pb2.GetLogsResponse(
        lines=[
            control_pb2.StepLogLine(
                id=row.id,
                step_key=row.step_key,
                attempt_number=row.attempt_number,
                line=common_pb2.LogLine(
                    at_unix_ms=ms_from_time(row.at), stream=row.stream, text=row.text
                ),
            )
            for row in rows
        ],
        next_after_id=rows[-1].id if rows else after_id,
    )


LOOP_STALL_SHOWN_S = 300.0  # how long a reported event-loop stall stays in agents list


def recent_loop_stall_ms(live: AgentSession | None) -> int:
    """The agent's last reported event-loop stall, while it is recent enough to matter."""
    if live is None or not live.loop_stall_ms:
        return 0
    return live.loop_stall_ms if time.monotonic() - live.loop_stall_seen < LOOP_STALL_SHOWN_S else 0


def agent_info(
    agent: AgentLike,
    held: int,
    live: AgentSession | None,
    *,
    now: dt.datetime,
    policy: HeartbeatPolicy,
) -> control_pb2.AgentInfo:
    status = agent_status(agent, live, now, policy)
    return control_pb2.AgentInfo(
        agent_id=agent.id,
        name=agent.name,
        environment=agent.environment,
        labels=dict(agent.labels),
        providers=[str(p) for p in agent.providers],
        capacity=agent.capacity,
        in_use=held,
        version=agent.version,
        last_heartbeat_unix_ms=ms_from_time(last_heard(agent, live, now)),
        status=status,
        hostname=agent.hostname,
        cert_fingerprint=agent.cert_fingerprint,
        cert_not_after_unix_ms=ms_from_time(agent.cert_not_after),
        degraded=live.degraded if live is not None else "",
        loop_stall_ms=recent_loop_stall_ms(live),
    )


def audit_record(row: AuditRecordLike) -> control_pb2.AuditRecord:
    return control_pb2.AuditRecord(
        id=row.id,
        at_unix_us=(row.at - _EPOCH) // dt.timedelta(microseconds=1),
        actor=row.actor,
        action=row.action,
        subject=row.subject,
        details_json=row.details,
        prev_hash=row.prev_hash,
        hash=row.hash,
    )


def audit_page(rows: Sequence[AuditRecordLike]) -> control_pb2.ListAuditRecordsResponse:
    return control_pb2.ListAuditRecordsResponse(
        records=[audit_record(r) for r in rows], next_after_id=rows[-1].id if rows else 0
    )


def verify_report(report: VerifyReport) -> control_pb2.VerifyAuditResponse:
    return control_pb2.VerifyAuditResponse(
        ok=report.ok,
        records=report.records,
        head_id=report.head_id,
        head_hash=report.head_hash,
        first_bad_id=report.first_bad_id or 0,
        problem=report.problem,
    )


def collect_answer(report: CollectReport) -> control_pb2.CollectResultsResponse:
    """What each store of each swept environment held and lost; a sweep of store "" holds
    errors of the environment as a whole (its agent disconnected, the listing timed out)."""
    return control_pb2.CollectResultsResponse(
        sweeps=[
            control_pb2.StoreSweep(
                environment=t.environment,
                store=t.store,
                objects=t.objects,
                orphans=t.orphans,
                orphan_bytes=t.orphan_bytes,
                deleted=t.deleted,
                errors=t.errors,
            )
            for t in report.tallies
        ],
        skipped=report.skipped,
    )
