"""The agent's protocol edge: the only module that touches generated protobuf code.

``*_to_proto`` / ``*_from_proto`` pairs turn wire messages into the plain values in
``agent.actions`` and ``agent.reports`` and back (docs/architecture.md, "Conventions").
Journaled report bodies are stored as serialized ``Report`` messages without seq, attempt or
token; those are filled in when a batch is sent, so a replay is byte-for-byte the report that
was first journaled.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agent.actions import (
    AckAction,
    Action,
    AssignAction,
    Assignment,
    AssignRunnerAction,
    CancelAction,
    CancelRunnerAction,
    CertificateAction,
    DecisionAction,
    DecisionValue,
    DeleteResultsAction,
    DrainAction,
    ServeResultAction,
    StoredObjectRef,
    SweepResultsAction,
    UnknownAction,
    Verdict,
    Welcome,
)
from agent.journal import JournalEntry
from agent.reports import (
    AttemptFinished,
    HandleRecorded,
    HeartbeatInfo,
    HeldAttempt,
    HelloInfo,
    LogChunk,
    LogLine,
    ProposeRunning,
    ReportBody,
)
from agent.results.housekeeping import ResultListingOut, ResultsDeletedOut
from meridian.core.convert import error_to_proto, spec_from_proto
from protos.meridian.v1 import agent_pb2, agent_pb2_grpc, common_pb2, control_pb2, control_pb2_grpc
from providers.base import ErrorInfo

_OUTCOME_TO_PROTO = {
    "succeeded": agent_pb2.ATTEMPT_OUTCOME_SUCCEEDED,
    "failed": agent_pb2.ATTEMPT_OUTCOME_FAILED,
    "timed_out": agent_pb2.ATTEMPT_OUTCOME_TIMED_OUT,
    "cancelled": agent_pb2.ATTEMPT_OUTCOME_CANCELLED,
}
_OUTCOME_FROM_PROTO = {v: k for k, v in _OUTCOME_TO_PROTO.items()}


def new_stub(channel: Any) -> Any:
    """An AgentService client stub on ``channel`` (sync or asyncio)."""
    return agent_pb2_grpc.AgentServiceStub(channel)


def new_control_stub(channel: Any) -> Any:
    """A ControlService stub: the agent only uses its public GetServerInfo call."""
    return control_pb2_grpc.ControlServiceStub(channel)


def server_info_request() -> Any:
    return control_pb2.GetServerInfoRequest()


# ---- enrollment and bundles -------------------------------------------------------------


def enroll_request(join_token: str, csr_pem: bytes, name: str) -> Any:
    return agent_pb2.EnrollRequest(join_token=join_token, csr_pem=csr_pem, name=name)


def enroll_response_from_proto(msg: Any) -> tuple[str, str, bytes, bytes, str]:
    """(agent_id, environment, certificate_pem, ca_certificate_pem, agent_address)."""
    return (
        msg.agent_id,
        msg.environment,
        bytes(msg.certificate_pem),
        bytes(msg.ca_certificate_pem),
        msg.agent_address,
    )


def fetch_bundle_request(sha256: str) -> Any:
    return agent_pb2.FetchBundleRequest(sha256=sha256)


def bundle_chunk_from_proto(msg: Any) -> tuple[str, int, bytes]:
    """(sha256, total_size, data); the first two are set on the first chunk only."""
    return (msg.sha256, int(msg.total_size), bytes(msg.data))


# ---- agent frames -----------------------------------------------------------------------


def _held_to_proto(held: Sequence[HeldAttempt]) -> list[Any]:
    return [
        agent_pb2.HeldAttempt(attempt_id=h.attempt_id, fencing_token=h.fencing_token) for h in held
    ]


def hello_to_proto(info: HelloInfo) -> Any:
    hello = agent_pb2.Hello(
        version=info.version,
        labels=dict(info.labels),
        providers=[
            agent_pb2.ProviderInfo(type=p.type, config_schema_json=p.config_schema_json)
            for p in info.providers
        ],
        capacity=info.capacity,
        held_attempts=_held_to_proto(info.held_attempts),
        hostname=info.hostname,
        draining=info.draining,
        degraded=info.degraded,
        result_stores=list(info.result_stores),
        default_result_store=info.default_result_store,
        runner_slots=info.runner_slots,
        held_runners=_held_runners_to_proto(info.held_runners),
    )
    return agent_pb2.AgentFrame(hello=hello)


def _held_runners_to_proto(held: Sequence[tuple[str, int]]) -> list[Any]:
    return [agent_pb2.HeldRunner(flow_run_id=r, runner_epoch=e) for r, e in held]


def runner_exited_frame(flow_run_id: str, epoch: int, exit_code: int, message: str) -> Any:
    """A hosted flow runner's process ended (decision 0018)."""
    exited = agent_pb2.RunnerExited(
        flow_run_id=flow_run_id, runner_epoch=epoch, exit_code=exit_code, message=message
    )
    return agent_pb2.AgentFrame(runner_exited=exited)


def heartbeat_to_proto(info: HeartbeatInfo) -> Any:
    beat = agent_pb2.Heartbeat(
        in_use=info.in_use,
        held_attempts=_held_to_proto(info.held_attempts),
        draining=info.draining,
        degraded=info.degraded,
        loop_stall_ms=info.loop_stall_ms,
        held_runners=_held_runners_to_proto(info.held_runners),
    )
    return agent_pb2.AgentFrame(heartbeat=beat)


def encode_report(body: ReportBody, at_unix_ms: int) -> tuple[str, bytes]:
    """(kind, payload) for the journal: the report without seq, attempt id and token."""
    msg = agent_pb2.Report(at_unix_ms=at_unix_ms)
    if isinstance(body, ProposeRunning):
        msg.running.SetInParent()
    elif isinstance(body, HandleRecorded):
        msg.handle.handle_json = body.handle_json
        msg.handle.resource_id = body.resource_id
    elif isinstance(body, LogChunk):
        msg.logs.lines.extend(
            common_pb2.LogLine(at_unix_ms=ln.at_unix_ms, stream=ln.stream, text=ln.text)
            for ln in body.lines
        )
    else:
        msg.finished.outcome = _OUTCOME_TO_PROTO[body.outcome]
        msg.finished.result_json = body.result_json
        msg.finished.result_ref_json = body.result_ref_json
        msg.finished.exit_code = body.exit_code
        if body.error is not None:
            msg.finished.error.CopyFrom(error_to_proto(body.error))
    return str(msg.WhichOneof("body")), msg.SerializeToString()


def decode_report(payload: bytes) -> tuple[int, ReportBody]:
    """(at_unix_ms, body) of a journaled payload; the inverse of ``encode_report``.

    Raises ValueError when the payload is not a report this agent can send (undecodable, or
    without a known body): such a journal entry is quarantined, never replayed.
    """
    try:
        msg = agent_pb2.Report.FromString(payload)
    except Exception as exc:  # DecodeError, or anything the runtime raises on garbage
        raise ValueError(f"undecodable report: {exc}") from exc
    if msg.WhichOneof("body") is None:
        raise ValueError("report without a known body")
    if msg.WhichOneof("body") == "finished" and msg.finished.outcome not in _OUTCOME_FROM_PROTO:
        raise ValueError("finished report without a known outcome")
    return int(msg.at_unix_ms), report_body_from_proto(msg)


def report_body_from_proto(msg: Any) -> ReportBody:
    kind = msg.WhichOneof("body")
    if kind == "running":
        return ProposeRunning()
    if kind == "handle":
        return HandleRecorded(
            handle_json=msg.handle.handle_json, resource_id=msg.handle.resource_id
        )
    if kind == "logs":
        return LogChunk(tuple(LogLine(ln.at_unix_ms, ln.stream, ln.text) for ln in msg.logs.lines))
    fin = msg.finished
    error = None
    if fin.HasField("error") and fin.error.error_class:
        error = ErrorInfo(
            error_class=fin.error.error_class,
            type=fin.error.type,
            message=fin.error.message,
            traceback=fin.error.traceback,
            type_mro=tuple(fin.error.type_mro),
        )
    return AttemptFinished(
        outcome=_OUTCOME_FROM_PROTO.get(fin.outcome, "failed"),  # type: ignore[arg-type]
        result_json=fin.result_json,
        error=error,
        exit_code=int(fin.exit_code),
        result_ref_json=fin.result_ref_json,
    )


def report_batch_to_proto(entries: Sequence[JournalEntry]) -> Any:
    """One ReportBatch frame carrying ``entries`` with their journal seq, attempt and token."""
    batch = agent_pb2.ReportBatch()
    for entry in entries:
        report = batch.reports.add()
        report.ParseFromString(entry.payload)
        report.seq = entry.seq
        report.attempt_id = entry.attempt_id
        report.fencing_token = entry.fencing_token
    return agent_pb2.AgentFrame(reports=batch)


def renew_certificate_frame(csr_pem: bytes) -> Any:
    return agent_pb2.AgentFrame(renew_certificate=agent_pb2.RenewCertificate(csr_pem=csr_pem))


def housekeeping_frame(answer: ResultListingOut | ResultsDeletedOut) -> Any:
    """The AgentFrame answering a SweepResults (one listing page) or a DeleteResults."""
    if isinstance(answer, ResultListingOut):
        return agent_pb2.AgentFrame(
            result_listing=agent_pb2.ResultListing(
                sweep_id=answer.sweep_id,
                objects=[
                    agent_pb2.StoredObject(
                        store=o.store, uri=o.uri, size=o.size, modified_unix_ms=o.modified_ms
                    )
                    for o in answer.objects
                ],
                done=answer.done,
                error=answer.error,
            )
        )
    return agent_pb2.AgentFrame(
        results_deleted=agent_pb2.ResultsDeleted(
            request_id=answer.request_id,
            count=answer.count,
            bytes=answer.bytes,
            errors=list(answer.errors),
        )
    )


# ---- result transfers -------------------------------------------------------------------


def fetch_result_request(
    attempt_id: str,
    fencing_token: int,
    ref_json: str,
    offset: int,
    *,
    accept_presigned_url: bool = False,
) -> Any:
    return agent_pb2.FetchResultRequest(
        attempt_id=attempt_id,
        fencing_token=fencing_token,
        ref_json=ref_json,
        offset=offset,
        accept_presigned_url=accept_presigned_url,
    )


def result_chunk(
    transfer_id: str,
    offset: int,
    data: bytes = b"",
    *,
    total_size: int = 0,
    sha256: str = "",
    error: str = "",
    presigned_url: str = "",
    presigned_url_ttl_s: int = 0,
) -> Any:
    return common_pb2.ResultChunk(
        transfer_id=transfer_id,
        offset=offset,
        data=data,
        total_size=total_size,
        sha256=sha256,
        error=error,
        presigned_url=presigned_url,
        presigned_url_ttl_s=presigned_url_ttl_s,
    )


def result_piece_from_proto(msg: Any) -> tuple[int, bytes, int, str]:
    """(offset, data, total_size, sha256) of a relayed chunk; the last two only on the first."""
    return int(msg.offset), bytes(msg.data), int(msg.total_size), str(msg.sha256)


def presigned_url_from_proto(msg: Any) -> tuple[str, int]:
    """(presigned URL, its lifetime in s) of a relayed chunk; ("", 0) on a chunk of bytes."""
    return str(msg.presigned_url), int(msg.presigned_url_ttl_s)


# ---- control frames ---------------------------------------------------------------------


def action_from_proto(frame: Any) -> Action:
    """Turn one ControlFrame into one internal Action (docs/architecture.md, "Conventions")."""
    kind = frame.WhichOneof("body")
    if kind == "welcome":
        w = frame.welcome
        return Welcome(
            agent_id=w.agent_id,
            environment=w.environment,
            session_id=w.session_id,
            heartbeat_interval_s=float(w.heartbeat_interval_s),
            lease_timeout_s=float(w.lease_timeout_s),
            last_applied_seq=int(w.last_applied_seq),
            max_frame_bytes=int(w.max_frame_bytes),
            certificate_renew_in_s=float(w.certificate_renew_in_s),
            labels=tuple(sorted((str(k), str(v)) for k, v in w.labels.items())),
        )
    if kind == "assign":
        return AssignAction(tuple(_assignment_from_proto(a) for a in frame.assign.assignments))
    if kind == "cancel":
        c = frame.cancel
        return CancelAction(c.attempt_id, int(c.fencing_token), c.reason, float(c.grace_s))
    if kind == "ack":
        return AckAction(int(frame.ack.up_to_seq))
    if kind == "drain":
        return DrainAction(frame.drain.reason)
    if kind == "decisions":
        return DecisionAction(tuple(_decision_from_proto(d) for d in frame.decisions.decisions))
    if kind == "certificate":
        c = frame.certificate
        return CertificateAction(
            bytes(c.certificate_pem), float(c.renew_in_s), c.refused, float(c.retry_in_s)
        )
    if kind == "sweep_results":
        sweep = frame.sweep_results
        return SweepResultsAction(sweep.sweep_id, float(sweep.older_than_s))
    if kind == "delete_results":
        d = frame.delete_results
        objects = tuple(StoredObjectRef(o.store, o.uri, int(o.size)) for o in d.objects)
        return DeleteResultsAction(d.request_id, objects)
    if kind == "serve_result":
        serve = frame.serve_result
        return ServeResultAction(
            serve.transfer_id,
            serve.ref_json,
            int(serve.offset),
            presigned_url_allowed=bool(serve.presigned_url_allowed),
        )
    if kind == "assign_runner":
        a = frame.assign_runner
        return AssignRunnerAction(
            a.flow_run_id,
            int(a.runner_epoch),
            a.bundle_sha256,
            a.entrypoint,
            a.runner_token,
            a.client_address,
            bytes(a.ca_certificate_pem),
        )
    if kind == "cancel_runner":
        c = frame.cancel_runner
        return CancelRunnerAction(c.flow_run_id, int(c.runner_epoch), c.reason, float(c.grace_s))
    return UnknownAction(str(kind))


def _decision_from_proto(d: Any) -> DecisionValue:
    # Anything but an explicit ACCEPT is a reject: starting infrastructure must be opted into.
    verdict: Verdict = "accept" if d.verdict == agent_pb2.VERDICT_ACCEPT else "reject"
    return DecisionValue(d.attempt_id, int(d.fencing_token), verdict, d.reason)


def _assignment_from_proto(a: Any) -> Assignment:
    return Assignment(
        attempt_id=a.attempt_id,
        fencing_token=int(a.fencing_token),
        flow_run_id=a.flow_run_id,
        step_run_id=a.step_run_id,
        step_key=a.step_key,
        attempt_number=int(a.attempt_number),
        spec=spec_from_proto(a.spec),
        bundle_sha256=a.bundle_sha256,
        inputs_json=a.inputs_json,
        input_refs_json=tuple(a.input_refs_json),
    )
