"""Conversions between ``meridian.models`` values and the generated protobuf messages.

This module, ``meridian/client.py`` and the client's helpers (``clientstreams``,
``resultdownload``) are the only SDK modules that import ``*_pb2``; every
``to_*``/``*_from_proto`` pair here is the single place a wire field is mapped.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from meridian import models
from meridian.core.convert import (
    error_from_proto,
    spec_to_proto,
    time_from_ms,
)
from meridian.core.errors import ConflictError
from protos.meridian.v1 import control_pb2


def submission_to_proto(sub: models.StepSubmission) -> control_pb2.StepSubmission:
    return control_pb2.StepSubmission(
        key=sub.key,
        spec=spec_to_proto(sub.spec),
        inputs_json=sub.inputs_json,
        cache_key=sub.cache_key,
        cache_expires_after_s=sub.cache_expires_after_s,
        input_refs_json=list(sub.input_refs_json),
    )


def submit_request(
    flow_run_id: str, submissions: Sequence[models.StepSubmission]
) -> control_pb2.SubmitStepsRequest:
    """The request for ``submissions``: each run of two or more consecutive calls sharing one
    spec object and cache expiration (the calls of a ``map``) becomes a ``StepBatch`` carrying
    them once; any other call is a single ``StepSubmission``."""
    request = control_pb2.SubmitStepsRequest(flow_run_id=flow_run_id)
    for group in _same_spec_runs(submissions):
        if len(group) == 1:
            request.steps.append(submission_to_proto(group[0]))
            continue
        request.batches.append(
            control_pb2.StepBatch(
                spec=spec_to_proto(group[0].spec),
                keys=[s.key for s in group],
                inputs_json=[s.inputs_json for s in group],
                cache_keys=[s.cache_key for s in group] if any(s.cache_key for s in group) else [],
                cache_expires_after_s=group[0].cache_expires_after_s,
                input_refs=_batch_input_refs(group),
            )
        )
    return request


def _batch_input_refs(group: Sequence[models.StepSubmission]) -> list[control_pb2.InputRefs]:
    """None when no call of the batch names a reference, else one list per call."""
    if not any(s.input_refs_json for s in group):
        return []
    return [control_pb2.InputRefs(ref_json=list(s.input_refs_json)) for s in group]


def _same_spec_runs(
    submissions: Sequence[models.StepSubmission],
) -> list[list[models.StepSubmission]]:
    runs: list[list[models.StepSubmission]] = []
    for sub in submissions:
        if (
            runs
            and runs[-1][0].spec is sub.spec
            and runs[-1][0].cache_expires_after_s == sub.cache_expires_after_s
        ):
            runs[-1].append(sub)
        else:
            runs.append([sub])
    return runs


def submit_answers(
    request: control_pb2.SubmitStepsRequest, response: control_pb2.SubmitStepsResponse
) -> dict[str, models.SubmittedStep]:
    """The answer for every call of ``request``, by key.

    Raises:
        ConflictError: the answer does not match the request (a control plane too old to
            know batches drops them, and must not be taken to have stored them).
    """
    if len(response.steps) != len(request.steps) or len(response.batches) != len(request.batches):
        raise ConflictError(
            f"the control plane answered {len(response.steps)} steps and "
            f"{len(response.batches)} batches for {len(request.steps)} and "
            f"{len(request.batches)}: it may be older than this SDK (batched submissions "
            "need Meridian 0.2 or later)"
        )
    answers = {a.key: submitted_from_proto(a) for a in response.steps}
    for batch, answer in zip(request.batches, response.batches, strict=True):
        if len(answer.step_run_ids) != len(batch.keys):
            raise ConflictError("the control plane answered a batch with the wrong count")
        answers.update(
            (key, models.SubmittedStep(key, step_run_id, "PENDING"))
            for key, step_run_id in zip(batch.keys, answer.step_run_ids, strict=True)
        )
        answers.update((a.key, submitted_from_proto(a)) for a in answer.existing)
    return answers


def submitted_from_proto(msg: control_pb2.SubmittedStep) -> models.SubmittedStep:
    return models.SubmittedStep(
        key=msg.key,
        step_run_id=msg.step_run_id,
        state=msg.state,
        existing=msg.existing,
        outcome=outcome_from_proto(msg.outcome) if msg.HasField("outcome") else None,
        outcome_omitted=msg.outcome_omitted,
    )


def outcome_from_proto(msg: control_pb2.StepOutcome) -> models.StepOutcome:
    return models.StepOutcome(
        step_run_id=msg.step_run_id,
        key=msg.key,
        state=msg.state,
        result_json=msg.result_json,
        error=error_from_proto(msg.error),
        result_ref_json=msg.result_ref_json,
    )


def approval_from_proto(msg: control_pb2.ApprovalInfo) -> models.ApprovalInfo:
    return models.ApprovalInfo(
        flow_run_id=msg.flow_run_id,
        key=msg.key,
        state=msg.state,
        message=msg.message,
        requested_at=time_from_ms(msg.requested_at_unix_ms),
        decided_at=time_from_ms(msg.decided_at_unix_ms),
        decided_by=msg.decided_by,
        reason=msg.reason,
        deadline=time_from_ms(msg.deadline_unix_ms),
    )


def approval_state_from_proto(msg: control_pb2.ApprovalState) -> models.ApprovalState:
    return models.ApprovalState(approval_from_proto(msg.approval), msg.run_state)


def update_from_proto(msg: control_pb2.RunUpdate) -> models.RunUpdate:
    outcome = outcome_from_proto(msg.step_outcome) if msg.HasField("step_outcome") else None
    approval = approval_from_proto(msg.approval) if msg.HasField("approval") else None
    return models.RunUpdate(
        event_id=msg.event_id,
        at=time_from_ms(msg.at_unix_ms),
        kind=msg.kind,
        step_key=msg.step_key,
        step_run_id=msg.step_run_id,
        attempt_id=msg.attempt_id,
        message=msg.message,
        state=msg.state,
        step_outcome=outcome,
        run_state=msg.run_state,
        approval=approval,
        environment=msg.environment,
    )


def attempt_from_proto(msg: control_pb2.AttemptDetail) -> models.AttemptDetail:
    return models.AttemptDetail(
        attempt_id=msg.attempt_id,
        number=msg.number,
        state=msg.state,
        environment=msg.environment,
        agent_id=msg.agent_id,
        agent_name=msg.agent_name,
        provider=msg.provider,
        resource_id=msg.resource_id,
        fencing_token=msg.fencing_token,
        queued_at=time_from_ms(msg.queued_at_unix_ms),
        started_at=time_from_ms(msg.started_at_unix_ms),
        ended_at=time_from_ms(msg.ended_at_unix_ms),
        error=error_from_proto(msg.error),
        exit_code=msg.exit_code,
        recovered=msg.recovered,
    )


def step_run_from_proto(msg: control_pb2.StepRunDetail) -> models.StepRunDetail:
    return models.StepRunDetail(
        step_run_id=msg.step_run_id,
        key=msg.key,
        name=msg.name,
        state=msg.state,
        target=msg.target,
        provider=msg.provider,
        inputs_digest=msg.inputs_digest,
        result_json=msg.result_json,
        error=error_from_proto(msg.error),
        created_at=time_from_ms(msg.created_at_unix_ms),
        ended_at=time_from_ms(msg.ended_at_unix_ms),
        attempts=tuple(attempt_from_proto(a) for a in msg.attempts),
        reused_from_run_id=msg.reused_from_run_id,
        reused_from_step_key=msg.reused_from_step_key,
        result_ref_json=msg.result_ref_json,
    )


def event_from_proto(msg: control_pb2.RunEvent) -> models.RunEvent:
    return models.RunEvent(
        event_id=msg.event_id,
        at=time_from_ms(msg.at_unix_ms),
        kind=msg.kind,
        step_key=msg.step_key,
        attempt_id=msg.attempt_id,
        from_state=msg.from_state,
        to_state=msg.to_state,
        message=msg.message,
    )


def run_detail_from_proto(msg: control_pb2.RunDetail) -> models.RunDetail:
    return models.RunDetail(
        flow_run_id=msg.flow_run_id,
        flow_name=msg.flow_name,
        entrypoint=msg.entrypoint,
        trigger=msg.trigger,
        parameters_json=msg.parameters_json,
        bundle_sha256=msg.bundle_sha256,
        state=msg.state,
        created_at=time_from_ms(msg.created_at_unix_ms),
        started_at=time_from_ms(msg.started_at_unix_ms),
        ended_at=time_from_ms(msg.ended_at_unix_ms),
        result_json=msg.result_json,
        error=error_from_proto(msg.error),
        steps=tuple(step_run_from_proto(s) for s in msg.steps),
        events=tuple(event_from_proto(e) for e in msg.events),
        retry_of=msg.retry_of,
        resumed_at=time_from_ms(msg.resumed_at_unix_ms),
        approvals=tuple(approval_from_proto(a) for a in msg.approvals),
        transfers=tuple(transfer_from_proto(t) for t in msg.transfers),
        parent_run_id=msg.parent_run_id,
        parent_key=msg.parent_key,
        children=tuple(run_summary_from_proto(c) for c in msg.children),
        waiting_for=msg.waiting_for,
    )


def transfer_from_proto(msg: control_pb2.TransferInfo) -> models.TransferInfo:
    return models.TransferInfo(
        transfer_id=msg.transfer_id,
        flow_run_id=msg.flow_run_id,
        step_key=msg.step_key,
        from_environment=msg.from_environment,
        to_environment=msg.to_environment,
        store=msg.store,
        bytes=msg.bytes,
        sha256=msg.sha256,
        state=msg.state,
        attempt_id=msg.attempt_id,
        error=msg.error,
        started_at=time_from_ms(msg.started_at_unix_ms),
        ended_at=time_from_ms(msg.ended_at_unix_ms),
        producer_run_id=msg.producer_run_id,
        producer_step_key=msg.producer_step_key,
        method=msg.method or "relay",
    )


def transfer_listing_from_proto(msg: control_pb2.ListTransfersResponse) -> models.TransferListing:
    return models.TransferListing(
        transfers=tuple(transfer_from_proto(t) for t in msg.transfers),
        totals=tuple(
            models.TransferTotal(t.from_environment, t.to_environment, t.bytes, t.transfers)
            for t in msg.totals
        ),
    )


def run_summary_from_proto(msg: control_pb2.RunSummary) -> models.RunSummary:
    return models.RunSummary(
        flow_run_id=msg.flow_run_id,
        flow_name=msg.flow_name,
        state=msg.state,
        created_at=time_from_ms(msg.created_at_unix_ms),
        ended_at=time_from_ms(msg.ended_at_unix_ms),
        steps_total=msg.steps_total,
        steps_failed=msg.steps_failed,
        parent_run_id=msg.parent_run_id,
        trigger=msg.trigger,
    )


def log_page_from_proto(msg: control_pb2.GetLogsResponse) -> models.LogPage:
    lines = tuple(
        models.StepLogLine(
            id=item.id,
            step_key=item.step_key,
            attempt_number=item.attempt_number,
            line=models.LogLine(
                at=time_from_ms(item.line.at_unix_ms),
                stream=item.line.stream,
                text=item.line.text,
            ),
        )
        for item in msg.lines
    )
    return models.LogPage(lines=lines, next_after_id=msg.next_after_id)


def agent_from_proto(msg: control_pb2.AgentInfo) -> models.AgentInfo:
    return models.AgentInfo(
        agent_id=msg.agent_id,
        name=msg.name,
        environment=msg.environment,
        labels=dict(msg.labels),
        providers=tuple(msg.providers),
        capacity=msg.capacity,
        in_use=msg.in_use,
        version=msg.version,
        last_heartbeat=time_from_ms(msg.last_heartbeat_unix_ms),
        status=msg.status,
        degraded=msg.degraded,
        loop_stall_ms=msg.loop_stall_ms,
        hostname=msg.hostname,
        cert_fingerprint=msg.cert_fingerprint,
        cert_not_after=time_from_ms(msg.cert_not_after_unix_ms),
    )


def environment_from_proto(msg: control_pb2.EnvironmentInfo) -> models.EnvironmentInfo:
    return models.EnvironmentInfo(
        name=msg.name,
        residency=msg.residency,
        residency_pinned_labels_only=msg.residency_pinned_labels_only,
        agents=msg.agents,
        connected=msg.connected,
        result_stores=tuple(msg.result_stores),
        default_result_store=msg.default_result_store,
    )


def collect_result_from_proto(msg: control_pb2.CollectResultsResponse) -> models.CollectResult:
    return models.CollectResult(
        sweeps=tuple(
            models.StoreSweep(
                environment=s.environment,
                store=s.store,
                objects=s.objects,
                orphans=s.orphans,
                orphan_bytes=s.orphan_bytes,
                deleted=s.deleted,
                errors=tuple(s.errors),
            )
            for s in msg.sweeps
        ),
        skipped=tuple(msg.skipped),
    )


def run_to_execute_from_proto(msg: control_pb2.RunToExecute) -> models.RunToExecute:
    return models.RunToExecute(
        flow_run_id=msg.flow_run_id,
        flow_name=msg.flow_name,
        entrypoint=msg.entrypoint,
        parameters_json=msg.parameters_json,
        bundle_sha256=msg.bundle_sha256,
        state=msg.state,
        watch_after_event_id=msg.watch_after_event_id,
        runner_token=msg.runner_token,
        hosted=msg.hosted,
    )


def audit_record_from_proto(msg: control_pb2.AuditRecord) -> models.AuditRecord:
    # Integer microseconds -> datetime without a float in between: the value is hashed.
    at = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=msg.at_unix_us)
    return models.AuditRecord(
        id=msg.id,
        at=at,
        actor=msg.actor,
        action=msg.action,
        subject=msg.subject,
        details_json=msg.details_json,
        prev_hash=msg.prev_hash,
        hash=msg.hash,
    )


def audit_verification_from_proto(msg: control_pb2.VerifyAuditResponse) -> models.AuditVerification:
    return models.AuditVerification(
        ok=msg.ok,
        records=msg.records,
        head_id=msg.head_id,
        head_hash=msg.head_hash,
        first_bad_id=msg.first_bad_id or None,
        problem=msg.problem,
    )


def webhook_from_proto(msg: control_pb2.WebhookInfo) -> models.WebhookInfo:
    return models.WebhookInfo(
        webhook_id=msg.webhook_id,
        deployment=msg.deployment,
        name=msg.name,
        created_at=time_from_ms(msg.created_at_unix_ms),
        created_by=msg.created_by,
        revoked_at=time_from_ms(msg.revoked_at_unix_ms) if msg.revoked_at_unix_ms else None,
    )
