"""The control plane's only translation between protobuf messages and internal values."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

from control_plane.api.validation import validate_error
from control_plane.auth.rotation import Renewal
from control_plane.orchestration.housekeeping import (
    DeleteResultsOut,
    ResultListingIn,
    ResultsDeletedIn,
    StoredObjectValue,
    SweepResultsOut,
)
from control_plane.orchestration.values import (
    AssignOut,
    AssignRunnerOut,
    CancelOut,
    CancelRunnerOut,
    DecisionOut,
    LogLineIn,
    ReportIn,
)
from control_plane.scheduler.registry import AckOut, CloseOut, DrainOut, Outgoing, ServeResultOut
from control_plane.transfers.broker import Chunk
from control_plane.usecases.agents import HelloIn
from meridian.core.convert import spec_to_proto, time_from_ms
from meridian.core.kinds import ReportKind
from meridian.core.states import AttemptState
from protos.meridian.v1 import agent_pb2, common_pb2

OUTCOMES = {
    agent_pb2.ATTEMPT_OUTCOME_SUCCEEDED: AttemptState.SUCCEEDED,
    agent_pb2.ATTEMPT_OUTCOME_FAILED: AttemptState.FAILED,
    agent_pb2.ATTEMPT_OUTCOME_TIMED_OUT: AttemptState.TIMED_OUT,
    agent_pb2.ATTEMPT_OUTCOME_CANCELLED: AttemptState.CANCELLED,
}


def from_ms(value: int, default: dt.datetime) -> dt.datetime:
    """A reported time, or ``default`` when it is unset or cannot be represented."""
    return time_from_ms(value) or default


# ---- agent stream -----------------------------------------------------------------------


MAX_SCHEMA_BYTES = 64 * 1024


def _schemas(hello: agent_pb2.Hello) -> dict[str, dict[str, Any]]:
    """Advertised option schemas; one that is oversized or not a JSON object is skipped (the
    agent still validates options itself before running anything)."""
    schemas: dict[str, dict[str, Any]] = {}
    for provider in hello.providers:
        text = provider.config_schema_json
        if not text or len(text) > MAX_SCHEMA_BYTES:
            continue
        try:
            schema = json.loads(text)
        except ValueError:
            continue
        if isinstance(schema, dict):
            schemas[provider.type] = schema
    return schemas


def hello_from_proto(hello: agent_pb2.Hello) -> HelloIn:
    return HelloIn(
        provider_schemas=_schemas(hello),
        version=hello.version[:64],
        labels=dict(hello.labels),
        providers=tuple(p.type for p in hello.providers),
        capacity=hello.capacity,
        held={h.attempt_id: h.fencing_token for h in hello.held_attempts},
        hostname=hello.hostname[:255],
        draining=hello.draining,
        degraded=degraded_reason(hello.degraded),
    )


def default_store(hello: agent_pb2.Hello, advertised: tuple[str, ...]) -> str:
    """The environment's default result store as the agent named it: one of the stores it
    advertised, else none."""
    name = hello.default_result_store
    return name if name in advertised else ""


MAX_DEGRADED = 64


def degraded_reason(text: str) -> str:
    """An agent's degraded reason as operators see it: bounded, printable."""
    return "".join(ch for ch in text[:MAX_DEGRADED] if ch.isprintable())


MAX_SEQ = 2**63 - 1  # stored in a signed 64-bit column


def report_from_proto(report: agent_pb2.Report, now: dt.datetime) -> ReportIn:
    if not 0 < report.seq <= MAX_SEQ or report.fencing_token > MAX_SEQ:
        raise ValueError(f"report seq and fencing token must be between 1 and {MAX_SEQ}")
    at = from_ms(report.at_unix_ms, now)
    base = ReportIn(
        seq=report.seq,
        attempt_id=report.attempt_id,
        fencing_token=report.fencing_token,
        at=at,
        kind=ReportKind.RUNNING,
    )
    body = report.WhichOneof("body")
    if body == "running":
        return base
    if body == "handle":
        return dataclasses.replace(
            base,
            kind=ReportKind.HANDLE,
            handle_json=report.handle.handle_json,
            resource_id=report.handle.resource_id,
        )
    if body == "logs":
        lines = tuple(
            LogLineIn(from_ms(line.at_unix_ms, at), line.stream, line.text)
            for line in report.logs.lines
        )
        return dataclasses.replace(base, kind=ReportKind.LOGS, lines=lines)
    if body == "finished":
        finished = report.finished
        outcome = OUTCOMES.get(finished.outcome)
        if outcome is None:
            raise ValueError(f"report {report.seq} has no outcome")
        return dataclasses.replace(
            base,
            kind=ReportKind.FINISHED,
            outcome=outcome,
            result_json=finished.result_json,
            # Judged when applied (its environment, an advertised store): a bad one fails
            # its attempt, it does not break the stream.
            result_ref_json=finished.result_ref_json,
            error=validate_error(finished.error),
            exit_code=finished.exit_code,
        )
    raise ValueError(f"report {report.seq} has no body")


def assign_to_proto(assign: AssignOut) -> agent_pb2.Assign:
    return agent_pb2.Assign(
        attempt_id=assign.attempt_id,
        fencing_token=assign.fencing_token,
        flow_run_id=assign.flow_run_id,
        step_run_id=assign.step_run_id,
        step_key=assign.step_key,
        attempt_number=assign.attempt_number,
        spec=spec_to_proto(assign.spec),
        bundle_sha256=assign.bundle_sha256,
        inputs_json=assign.inputs_json,
        input_refs_json=list(assign.input_refs_json),
    )


def welcome_frame(
    agent_id: str,
    environment: str,
    session_id: str,
    heartbeat_interval_s: float,
    lease_timeout_s: float,
    last_applied_seq: int,
    max_frame_bytes: int,
    certificate_renew_in_s: float = 0.0,
    labels: Mapping[str, str] | None = None,
) -> agent_pb2.ControlFrame:
    return agent_pb2.ControlFrame(
        welcome=agent_pb2.Welcome(
            agent_id=agent_id,
            environment=environment,
            session_id=session_id,
            heartbeat_interval_s=heartbeat_interval_s,
            lease_timeout_s=lease_timeout_s,
            last_applied_seq=last_applied_seq,
            max_frame_bytes=max_frame_bytes,
            certificate_renew_in_s=certificate_renew_in_s,
            labels=dict(labels or {}),
        )
    )


def outgoing_to_frame(item: Outgoing) -> agent_pb2.ControlFrame:
    if isinstance(item, AssignOut):
        return agent_pb2.ControlFrame(
            assign=agent_pb2.AssignBatch(assignments=[assign_to_proto(item)])
        )
    if isinstance(item, CancelOut):
        return agent_pb2.ControlFrame(
            cancel=agent_pb2.Cancel(
                attempt_id=item.attempt_id,
                fencing_token=item.fencing_token,
                reason=item.reason,
                grace_s=item.grace_s,
            )
        )
    if isinstance(item, AckOut):
        return agent_pb2.ControlFrame(ack=agent_pb2.Ack(up_to_seq=item.up_to_seq))
    if isinstance(item, DrainOut):
        return agent_pb2.ControlFrame(drain=agent_pb2.Drain(reason=item.reason))
    if isinstance(item, list):
        return agent_pb2.ControlFrame(decisions=decisions_to_proto(item))
    if isinstance(item, Renewal):
        return agent_pb2.ControlFrame(
            certificate=agent_pb2.CertificateRenewal(
                certificate_pem=item.certificate_pem,
                renew_in_s=item.renew_in_s,
                refused=item.refused,
                retry_in_s=item.retry_in_s,
            )
        )
    if isinstance(item, SweepResultsOut):
        return agent_pb2.ControlFrame(
            sweep_results=agent_pb2.SweepResults(
                sweep_id=item.sweep_id, older_than_s=item.older_than_s
            )
        )
    if isinstance(item, DeleteResultsOut):
        return agent_pb2.ControlFrame(
            delete_results=agent_pb2.DeleteResults(
                request_id=item.request_id,
                objects=[
                    agent_pb2.StoredObject(store=o.store, uri=o.uri, size=o.size)
                    for o in item.objects
                ],
            )
        )
    if isinstance(item, ServeResultOut):
        return agent_pb2.ControlFrame(
            serve_result=agent_pb2.ServeResult(
                transfer_id=item.transfer_id, ref_json=item.ref_json, offset=item.offset
            )
        )
    if isinstance(item, AssignRunnerOut | CancelRunnerOut):
        return runner_frame(item)
    raise TypeError(f"cannot send {item!r}")  # CloseOut is handled by the stream itself


def runner_frame(item: AssignRunnerOut | CancelRunnerOut) -> agent_pb2.ControlFrame:
    """The AssignRunner / CancelRunner frame of a hosted flow runner (decision 0018)."""
    if isinstance(item, CancelRunnerOut):
        return agent_pb2.ControlFrame(
            cancel_runner=agent_pb2.CancelRunner(
                flow_run_id=item.flow_run_id,
                runner_epoch=item.runner_epoch,
                reason=item.reason,
                grace_s=item.grace_s,
            )
        )
    return agent_pb2.ControlFrame(
        assign_runner=agent_pb2.AssignRunner(
            flow_run_id=item.flow_run_id,
            runner_epoch=item.runner_epoch,
            bundle_sha256=item.bundle_sha256,
            entrypoint=item.entrypoint,
            runner_token=item.runner_token,
            client_address=item.client_address,
            ca_certificate_pem=item.ca_certificate_pem,
        )
    )


MAX_RUNNER_SLOTS = 1000
MAX_HELD_RUNNERS = 10_000


def runner_slots(hello: agent_pb2.Hello) -> int:
    """The runner slots an agent offers, bounded (a huge number is a broken agent)."""
    return min(int(hello.runner_slots), MAX_RUNNER_SLOTS)


def held_runners(held: Any) -> dict[str, int]:
    """HeldRunner entries (Hello or Heartbeat) as run id -> epoch, bounded."""
    return {h.flow_run_id: int(h.runner_epoch) for h in list(held)[:MAX_HELD_RUNNERS]}


@dataclasses.dataclass(frozen=True)
class RunnerExitedIn:
    flow_run_id: str
    runner_epoch: int
    exit_code: int
    message: str


def runner_exited_from_proto(msg: agent_pb2.RunnerExited) -> RunnerExitedIn:
    return RunnerExitedIn(
        msg.flow_run_id[:64], int(msg.runner_epoch), int(msg.exit_code), msg.message[:4000]
    )


def decisions_to_proto(decisions: list[DecisionOut]) -> agent_pb2.DecisionBatch:
    verdict = {True: agent_pb2.VERDICT_ACCEPT, False: agent_pb2.VERDICT_REJECT}
    return agent_pb2.DecisionBatch(
        decisions=[
            agent_pb2.Decision(
                attempt_id=d.attempt_id,
                fencing_token=d.fencing_token,
                verdict=verdict[d.accept],
                reason=d.reason,
            )
            for d in decisions
        ]
    )


def merge_assign_frames(
    frames: list[agent_pb2.ControlFrame], max_bytes: int
) -> list[agent_pb2.ControlFrame]:
    """Coalesce consecutive Assign frames into batches no larger than ``max_bytes``."""
    merged: list[agent_pb2.ControlFrame] = []
    for frame in frames:
        last = merged[-1] if merged else None
        if (
            last is not None
            and frame.WhichOneof("body") == "assign"
            and last.WhichOneof("body") == "assign"
            and last.ByteSize() + frame.ByteSize() < max_bytes
        ):
            last.assign.assignments.extend(frame.assign.assignments)
        else:
            merged.append(frame)
    return merged


def is_close(item: Outgoing) -> bool:
    return isinstance(item, CloseOut)


# ---- result-store housekeeping ----------------------------------------------------------

MAX_HOUSEKEEPING_ERRORS = 1000


def result_listing_from_proto(listing: agent_pb2.ResultListing) -> ResultListingIn:
    """A sweep's page as sent; its bounds are judged by ``orchestration.housekeeping``."""
    return ResultListingIn(
        sweep_id=listing.sweep_id[:64],
        objects=tuple(
            StoredObjectValue(o.store, o.uri, o.size, o.modified_unix_ms) for o in listing.objects
        ),
        done=listing.done,
        error=listing.error[:8192],
    )


def results_deleted_from_proto(answer: agent_pb2.ResultsDeleted) -> ResultsDeletedIn:
    return ResultsDeletedIn(
        request_id=answer.request_id[:64],
        count=answer.count,
        bytes=answer.bytes,
        errors=tuple(line[:4096] for line in answer.errors[:MAX_HOUSEKEEPING_ERRORS]),
    )


# ---- result transfers -------------------------------------------------------------------


def chunk_from_proto(msg: common_pb2.ResultChunk) -> Chunk:
    """A pushed chunk as sent; the broker judges its bounds (sizes, offsets, digest)."""
    return Chunk(
        offset=msg.offset,
        data=msg.data,
        transfer_id=msg.transfer_id[:64],
        total_size=msg.total_size,
        sha256=msg.sha256[:64],
        error=msg.error[:4096],
    )


def chunk_to_proto(chunk: Chunk) -> common_pb2.ResultChunk:
    return common_pb2.ResultChunk(
        transfer_id=chunk.transfer_id,
        offset=chunk.offset,
        data=chunk.data,
        total_size=chunk.total_size,
        sha256=chunk.sha256,
    )
