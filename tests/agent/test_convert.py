"""Control frames become one Action each; report bodies round-trip through the journal form."""

from __future__ import annotations

from agent import convert
from agent.actions import (
    AckAction,
    AssignAction,
    CancelAction,
    DecisionAction,
    DecisionValue,
    DrainAction,
    UnknownAction,
    Welcome,
)
from agent.journal import JournalEntry
from agent.reports import (
    AttemptFinished,
    HandleRecorded,
    HeartbeatInfo,
    HeldAttempt,
    LogChunk,
    LogLine,
    ProposeRunning,
    ReportBody,
)
from protos.meridian.v1 import agent_pb2, common_pb2
from providers.base import ErrorInfo


def test_welcome() -> None:
    frame = agent_pb2.ControlFrame(
        welcome=agent_pb2.Welcome(
            agent_id="ag",
            environment="env",
            session_id="s",
            heartbeat_interval_s=2.5,
            lease_timeout_s=30,
            last_applied_seq=41,
            max_frame_bytes=4096,
        )
    )
    assert convert.action_from_proto(frame) == Welcome("ag", "env", "s", 2.5, 30.0, 41, 4096)


def test_assign_batch_becomes_one_action() -> None:
    spec = common_pb2.StepSpec(
        name="train",
        module="flows.ml",
        function="train",
        provider="process",
        timeout_s=60,
        options_json='{"cpu": 2}',
        target="cloud=aws",
    )
    frame = agent_pb2.ControlFrame(
        assign=agent_pb2.AssignBatch(
            assignments=[
                agent_pb2.Assign(
                    attempt_id=f"a{i}",
                    fencing_token=i,
                    flow_run_id="r",
                    step_run_id="sr",
                    step_key="train#1",
                    attempt_number=2,
                    spec=spec,
                    bundle_sha256="ab" * 32,
                    inputs_json="{}",
                )
                for i in (1, 2)
            ]
        )
    )
    action = convert.action_from_proto(frame)
    assert isinstance(action, AssignAction)
    first = action.assignments[0]
    assert [a.attempt_id for a in action.assignments] == ["a1", "a2"]
    assert (first.fencing_token, first.attempt_number, first.bundle_sha256) == (1, 2, "ab" * 32)
    assert first.spec.provider == "process" and first.spec.timeout_s == 60.0
    assert first.spec.options_json == '{"cpu": 2}'


def test_cancel_ack_drain_decisions_and_unknown() -> None:
    cancel = agent_pb2.Cancel(attempt_id="a", fencing_token=3, reason="user", grace_s=5)
    assert convert.action_from_proto(agent_pb2.ControlFrame(cancel=cancel)) == CancelAction(
        "a", 3, "user", 5.0
    )
    ack = agent_pb2.ControlFrame(ack=agent_pb2.Ack(up_to_seq=9))
    assert convert.action_from_proto(ack) == AckAction(9)
    drain = agent_pb2.ControlFrame(drain=agent_pb2.Drain(reason="upgrade"))
    assert convert.action_from_proto(drain) == DrainAction("upgrade")
    decisions = agent_pb2.DecisionBatch(
        decisions=[
            agent_pb2.Decision(attempt_id="a", fencing_token=1, verdict=agent_pb2.VERDICT_ACCEPT),
            agent_pb2.Decision(attempt_id="b", fencing_token=2, reason="stale"),
        ]
    )
    assert convert.action_from_proto(agent_pb2.ControlFrame(decisions=decisions)) == (
        DecisionAction((DecisionValue("a", 1, "accept"), DecisionValue("b", 2, "reject", "stale")))
    )  # an unspecified verdict never starts infrastructure
    assert convert.action_from_proto(agent_pb2.ControlFrame()) == UnknownAction("None")


def test_report_bodies_round_trip_and_batch_with_seq() -> None:
    bodies: list[ReportBody] = [
        ProposeRunning(),
        HandleRecorded('{"pid": 3}', "3"),
        LogChunk((LogLine(5, "stdout", "hi"), LogLine(6, "stderr", "oops"))),
        AttemptFinished("succeeded", result_json="42", exit_code=0),
        AttemptFinished(
            "failed",
            error=ErrorInfo("transient", "builtins.ValueError", "bad", "tb", ("a.B", "a.C")),
            exit_code=1,
        ),
    ]
    entries = []
    for seq, body in enumerate(bodies, start=1):
        kind, payload = convert.encode_report(body, at_unix_ms=1000 + seq)
        assert convert.decode_report(payload) == (1000 + seq, body)
        entries.append(JournalEntry(seq, kind, "att", 7, payload))
    assert [e.kind for e in entries] == ["running", "handle", "logs", "finished", "finished"]
    frame = convert.report_batch_to_proto(entries)
    assert [(r.seq, r.attempt_id, r.fencing_token) for r in frame.reports.reports] == [
        (i, "att", 7) for i in range(1, 6)
    ]


def test_heartbeat_to_proto() -> None:
    frame = convert.heartbeat_to_proto(HeartbeatInfo(1, (HeldAttempt("a", 2),), draining=True))
    assert frame.heartbeat.in_use == 1 and frame.heartbeat.draining
    assert [(h.attempt_id, h.fencing_token) for h in frame.heartbeat.held_attempts] == [("a", 2)]
