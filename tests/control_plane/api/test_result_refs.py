"""Stored results and data residency over a real control plane (gRPC, mutual TLS, SQLite and
PostgreSQL) and real agent streams: an agent that advertised its result stores finishes a step
with a reference, which watchers, the audit view and later assignments carry; a forged input
reference is INVALID_ARGUMENT; a submission no agent may run under a residency rule, like a
client's download of a result under one, is PERMISSION_DENIED naming the residency kind (the
client raises ``ResidencyRefused`` for both) and the refusal leaves an audit record;
environments list their rules, agents and stores, and only admins set rules."""

from __future__ import annotations

import json
from pathlib import Path

import grpc

from control_plane import create_api_token
from meridian.core.residency import ResidencyRefused
from meridian.core.resultref import REF_MARKER, ResultRef
from meridian.core.wireerrors import ERROR_KIND_KEY
from meridian.rpcerrors import map_rpc_error
from protos.meridian.v1 import agent_pb2, control_pb2, control_pb2_grpc
from tests.control_plane.api.test_edges import (
    CALL_TIMEOUT_S,
    AgentStream,
    Edge,
    assert_status,
    edge,  # noqa: F401 (the fixture)
    enrolled_agent,
    new_run,
    refused,
    running_report,
    spec,
    submit,
)
from tests.support.tls import with_bearer


def connect_agent(
    edge: Edge,  # noqa: F811 (the imported fixture)
    environment: str,
    labels: dict[str, str],
    stores: tuple[str, ...] = (),
) -> AgentStream:
    agent = enrolled_agent(edge, environment)
    stream = AgentStream(agent.stub)
    edge.closers.append(stream.close)
    stream.send(
        agent_pb2.AgentFrame(
            hello=agent_pb2.Hello(
                version="test",
                labels=labels,
                providers=[agent_pb2.ProviderInfo(type="process")],
                capacity=2,
                hostname="refs-test",
                result_stores=list(stores),
                default_result_store=stores[0] if stores else "",
            )
        )
    )
    stream.recv_until("welcome")
    return stream


def finished_with_ref(seq: int, assign: agent_pb2.Assign, ref_json: str) -> agent_pb2.AgentFrame:
    finished = agent_pb2.AttemptFinished(
        outcome=agent_pb2.ATTEMPT_OUTCOME_SUCCEEDED, result_ref_json=ref_json
    )
    report = agent_pb2.Report(
        seq=seq,
        attempt_id=assign.attempt_id,
        fencing_token=assign.fencing_token,
        finished=finished,
    )
    return agent_pb2.AgentFrame(reports=agent_pb2.ReportBatch(reports=[report]))


def produce(edge: Edge, stream: AgentStream, site: str, ref: ResultRef) -> str:  # noqa: F811
    """A run whose step on ``site`` finished with ``ref``; the run's id."""
    run_id = new_run(edge)
    step = control_pb2.StepSubmission(
        key="extract#1",
        spec=spec(target=f"site={site}"),
        inputs_json=json.dumps({"args": [], "kwargs": {}}),
    )
    submit(edge, run_id, step)
    (assign,) = stream.recv_until("assign").assign.assignments
    stream.send(running_report(1, assign))
    stream.recv_until("decisions")
    stream.send(finished_with_ref(2, assign, ref.to_json()))
    stream.recv_until("ack")
    return run_id


def consumer(target: str, *refs: ResultRef, key: str = "load#1") -> control_pb2.StepSubmission:
    inputs = {"args": [{REF_MARKER: r.to_value()} for r in refs], "kwargs": {}}
    return control_pb2.StepSubmission(
        key=key,
        spec=spec(target=target),
        inputs_json=json.dumps(inputs),
        input_refs_json=[r.to_json() for r in refs],
    )


def ref_of(environment: str, sha_digit: str) -> ResultRef:
    return ResultRef(
        environment=environment,
        store="s3-main",
        uri=f"s3://acme-results/runs/{environment}/extract/result",
        size=300 * 1024 * 1024,
        sha256=sha_digit * 64,
        serializer="parquet",
    )


def test_a_stored_result_reaches_watchers_readers_and_the_next_assignment(
    edge: Edge,  # noqa: F811
) -> None:
    producer = connect_agent(edge, "refs-aws", {"site": "refs-aws"}, ("s3-main", "scratch"))
    ref = ref_of("refs-aws", "a")
    run_id = produce(edge, producer, "refs-aws", ref)
    watch = edge.control.WatchRun(
        control_pb2.WatchRunRequest(flow_run_id=run_id), timeout=CALL_TIMEOUT_S
    )
    for update in watch:
        if update.kind == "step.completed":
            assert update.step_outcome.result_ref_json == ref.to_json()
            assert update.step_outcome.result_json == ""
            watch.cancel()
            break
    detail = edge.control.GetRun(control_pb2.GetRunRequest(flow_run_id=run_id), timeout=10)
    assert detail.steps[0].result_ref_json == ref.to_json()

    # Passed on as an input: the assignment names it for the agent to materialize.
    submit(edge, new_run(edge), consumer("site=refs-aws", ref))
    (assign,) = producer.recv_until("assign").assign.assignments
    assert assign.step_key == "load#1" and list(assign.input_refs_json) == [ref.to_json()]

    other_object = ResultRef(
        environment=ref.environment,
        store=ref.store,
        uri="s3://acme-results/elsewhere/secret",
        size=ref.size,
        sha256=ref.sha256,
        serializer=ref.serializer,
    )
    error = refused(lambda: submit(edge, new_run(edge), consumer("site=refs-aws", other_object)))
    assert_status(error, grpc.StatusCode.INVALID_ARGUMENT, "did not record", "'load#1'")

    listed = edge.control.ListEnvironments(control_pb2.ListEnvironmentsRequest(), timeout=10)
    (env,) = [e for e in listed.environments if e.name == "refs-aws"]
    assert (env.agents, env.connected, env.residency) == (1, 1, "")
    assert list(env.result_stores) == ["s3-main", "scratch"]
    assert env.default_result_store == "s3-main"


def test_a_reference_into_another_environment_fails_the_attempt(
    edge: Edge,  # noqa: F811
) -> None:
    producer = connect_agent(edge, "refs-liar", {"site": "refs-liar"}, ("s3-main",))
    run_id = produce(edge, producer, "refs-liar", ref_of("refs-aws", "b"))
    detail = edge.control.GetRun(control_pb2.GetRunRequest(flow_run_id=run_id), timeout=10)
    (step,) = detail.steps
    assert step.result_ref_json == "" and step.attempts[0].state == "FAILED"
    assert "names environment 'refs-aws'" in step.attempts[0].error.message
    assert any(e.kind == "report.rejected" for e in detail.events)


def assert_residency_refused(error: grpc.RpcError, *needles: str) -> None:
    """PERMISSION_DENIED naming the residency kind, which the client raises as its class."""
    assert_status(error, grpc.StatusCode.PERMISSION_DENIED, *needles)
    assert isinstance(error, grpc.Call)
    assert (ERROR_KIND_KEY, "residency-refused") in tuple(error.trailing_metadata() or ())
    mapped = map_rpc_error(error, "edge", Path("ca.pem"))
    assert type(mapped) is ResidencyRefused and str(mapped) == error.details()


def test_a_residency_refusal_is_one_class_for_submissions_and_downloads_and_audited(
    edge: Edge,  # noqa: F811
) -> None:
    producer = connect_agent(edge, "res-eu", {"site": "res-eu"}, ("s3-main",))
    ref = ref_of("res-eu", "c")
    produced = produce(edge, producer, "res-eu", ref)
    connect_agent(edge, "res-us", {"site": "res-us", "region": "us-east-1"})
    viewer = with_bearer(
        grpc.secure_channel(
            edge.plane.address, grpc.ssl_channel_credentials(root_certificates=edge.ca_pem)
        ),
        create_api_token(edge.config.data_dir, "viewer", db_url=edge.config.db_url),
    )
    edge.closers.append(viewer.close)
    as_viewer = control_pb2_grpc.ControlServiceStub(viewer)
    rule = control_pb2.SetResidencyRequest(
        environment="res-eu", rule="region in (eu-west-1)", reason="gdpr"
    )
    error = refused(lambda: as_viewer.SetResidency(rule, timeout=10))
    assert_status(error, grpc.StatusCode.PERMISSION_DENIED, "admin")
    info = edge.control.SetResidency(rule, timeout=10)
    assert (info.name, info.residency, info.connected) == ("res-eu", "region in (eu-west-1)", 1)

    run_id = new_run(edge)
    error = refused(lambda: submit(edge, run_id, consumer("site=res-us", ref)))
    assert_residency_refused(
        error,
        "'load#1'",
        "'res-eu'",
        "region in (eu-west-1)",
        "'res-us'",
    )
    records = edge.control.ListAuditRecords(
        control_pb2.ListAuditRecordsRequest(newest=True, limit=50), timeout=10
    ).records
    refusals = [r for r in records if r.action == "residency.refused" and r.subject == run_id]
    assert len(refusals) == 1
    assert json.loads(refusals[0].details_json)["rules"] == {"res-eu": "region in (eu-west-1)"}
    assert edge.control.VerifyAudit(control_pb2.VerifyAuditRequest(), timeout=30).ok
    download = control_pb2.FetchRunResultRequest(flow_run_id=produced, step_key="extract#1")
    error = refused(lambda: edge.control.FetchResult(download, timeout=CALL_TIMEOUT_S))
    assert_residency_refused(error, "a download to a client is outside every environment")
    listed = as_viewer.ListEnvironments(control_pb2.ListEnvironmentsRequest(), timeout=10)
    assert {e.name: e.residency for e in listed.environments}["res-eu"] == "region in (eu-west-1)"
    # A reader in the producing environment is allowed: the bytes do not move.
    submit(edge, run_id, consumer("site=res-eu", ref, key="local#1"))
    (assign,) = producer.recv_until("assign").assign.assignments
    assert assign.step_key == "local#1"
