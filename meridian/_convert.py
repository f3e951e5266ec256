"""Conversions between ``meridian.models`` values and the generated protobuf messages.

This module and ``meridian/client.py`` are the only SDK modules that import ``*_pb2``; every
``to_*``/``*_from_proto`` pair here is the single place a wire field is mapped.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from meridian import models
from protos.meridian.v1 import common_pb2, control_pb2


def time_from_ms(value: int) -> datetime | None:
    """Unix milliseconds -> aware UTC datetime; 0 (unset) -> None."""
    if not value:
        return None
    return datetime.fromtimestamp(value / 1000.0, tz=UTC)


def error_to_proto(error: models.ErrorInfo | None) -> common_pb2.ErrorInfo:
    if error is None:
        return common_pb2.ErrorInfo()
    return common_pb2.ErrorInfo(
        error_class=error.error_class,
        type=error.type,
        message=error.message,
        traceback=error.traceback,
        type_mro=list(error.type_mro),
    )


def error_from_proto(msg: common_pb2.ErrorInfo) -> models.ErrorInfo | None:
    # proto3 has no presence for sub-messages we can rely on across servers: treat an
    # all-empty ErrorInfo as "no error".
    if not (msg.error_class or msg.type or msg.message or msg.traceback):
        return None
    return models.ErrorInfo(
        error_class=msg.error_class,
        type=msg.type,
        message=msg.message,
        traceback=msg.traceback,
        type_mro=tuple(msg.type_mro),
    )


def spec_to_proto(spec: models.StepSpec) -> common_pb2.StepSpec:
    return common_pb2.StepSpec(
        name=spec.name,
        module=spec.module,
        function=spec.function,
        target=spec.target,
        provider=spec.provider,
        retries=spec.retries,
        retry_delay_s=spec.retry_delay_s,
        retry_backoff=spec.retry_backoff,
        retry_jitter=spec.retry_jitter,
        timeout_s=spec.timeout_s,
        schedule_timeout_s=spec.schedule_timeout_s,
        retry_on=list(spec.retry_on),
        options_json=spec.options_json,
        on_agent_lost=spec.on_agent_lost,
        lost_after_s=spec.lost_after_s,
        secrets=dict(spec.secrets),
    )


def spec_from_proto(msg: common_pb2.StepSpec) -> models.StepSpec:
    return models.StepSpec(
        name=msg.name,
        module=msg.module,
        function=msg.function,
        target=msg.target,
        provider=msg.provider,
        retries=msg.retries,
        retry_delay_s=msg.retry_delay_s,
        retry_backoff=msg.retry_backoff,
        retry_jitter=msg.retry_jitter,
        timeout_s=msg.timeout_s,
        schedule_timeout_s=msg.schedule_timeout_s,
        retry_on=tuple(msg.retry_on),
        options_json=msg.options_json,
        on_agent_lost=msg.on_agent_lost or "retry",
        lost_after_s=msg.lost_after_s,
        secrets=tuple(sorted(msg.secrets.items())),
    )


def submission_to_proto(sub: models.StepSubmission) -> control_pb2.StepSubmission:
    return control_pb2.StepSubmission(
        key=sub.key, spec=spec_to_proto(sub.spec), inputs_json=sub.inputs_json
    )


def submission_from_proto(msg: control_pb2.StepSubmission) -> models.StepSubmission:
    return models.StepSubmission(
        key=msg.key, spec=spec_from_proto(msg.spec), inputs_json=msg.inputs_json
    )


def submitted_from_proto(msg: control_pb2.SubmittedStep) -> models.SubmittedStep:
    return models.SubmittedStep(
        key=msg.key,
        step_run_id=msg.step_run_id,
        state=msg.state,
        existing=msg.existing,
        outcome=outcome_from_proto(msg.outcome) if msg.HasField("outcome") else None,
    )


def outcome_from_proto(msg: control_pb2.StepOutcome) -> models.StepOutcome:
    return models.StepOutcome(
        step_run_id=msg.step_run_id,
        key=msg.key,
        state=msg.state,
        result_json=msg.result_json,
        error=error_from_proto(msg.error),
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
        hostname=msg.hostname,
        cert_fingerprint=msg.cert_fingerprint,
        cert_not_after=time_from_ms(msg.cert_not_after_unix_ms),
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
    )


def ms_from_time(value: datetime | None) -> int:
    """Aware datetime -> Unix milliseconds; None -> 0 (unset)."""
    if value is None:
        return 0
    return int(value.timestamp() * 1000)


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
