"""The gRPC edge of a real control plane, fed bad requests through raw stubs.

Every refusal must carry the right status code and a message that says what to fix, and
nothing a client sends may break the server: the last test checks it still serves. One
in-process ``ControlPlane`` (on its own event-loop thread, both TLS listeners on loopback)
serves the module; it runs on SQLite and, when ``MERIDIAN_TEST_POSTGRES_URL`` is set, again
on PostgreSQL, since most refusals are decided against the store.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy.orm import Session

from agent.identity import generate_key_and_csr
from control_plane import ControlPlane, ServerConfig, create_api_token, create_join_token
from control_plane.api.validation import MAX_INPUTS_BYTES, MAX_RETRIES
from control_plane.store.db import make_engine
from control_plane.store.tx import Tx, record_event
from meridian.core.clock import utcnow
from meridian.core.kinds import EventKind
from protos.meridian.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    common_pb2,
    control_pb2,
    control_pb2_grpc,
)
from tests.support.databases import POSTGRES_ENV
from tests.support.databases import postgres_database as _postgres_database
from tests.support.plane import ThreadedControlPlane
from tests.support.tls import with_bearer

MAX_BUNDLE = 64 * 1024
CALL_TIMEOUT_S = 20.0


# ---- the control plane under test ---------------------------------------------------------


@dataclass
class Edge:
    """The running control plane and what tests need to reach it."""

    config: ServerConfig
    plane: ControlPlane
    ca_pem: bytes
    channel: grpc.Channel
    control: control_pb2_grpc.ControlServiceStub
    public_agent: agent_pb2_grpc.AgentServiceStub  # AgentService on the server-TLS listener
    closers: list[Callable[[], None]] = field(default_factory=list)

    def token(
        self, environment: str, ttl_s: float = 600.0, labels: dict[str, str] | None = None
    ) -> str:
        return create_join_token(
            self.config.data_dir,
            environment,
            ttl_s=ttl_s,
            db_url=self.config.db_url,
            labels=labels,
        )


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def edge(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Edge]:
    db_urls: Iterator[str] | None = None
    db_url = None
    if request.param == "postgres":
        base = os.environ.get(POSTGRES_ENV)
        if not base:
            pytest.skip(f"set {POSTGRES_ENV} to run the edge tests against PostgreSQL")
        db_urls = _postgres_database(base)
        db_url = next(db_urls)
    config = ServerConfig(
        data_dir=tmp_path_factory.mktemp("edge-server"),
        listen="127.0.0.1:0",
        agent_listen="127.0.0.1:0",
        db_url=db_url,
        max_bundle_bytes=MAX_BUNDLE,
    )
    server = ThreadedControlPlane(config)
    plane = server.start()
    ca_pem = plane.ca_file.read_bytes()
    admin_token = create_api_token(config.data_dir, "admin", db_url=config.db_url)
    channel = with_bearer(
        grpc.secure_channel(
            plane.address,
            grpc.ssl_channel_credentials(root_certificates=ca_pem),
            options=[("grpc.max_send_message_length", 64 * 1024 * 1024)],
        ),
        admin_token,
    )
    edge = Edge(
        config,
        plane,
        ca_pem,
        channel,
        control_pb2_grpc.ControlServiceStub(channel),
        agent_pb2_grpc.AgentServiceStub(channel),
    )
    try:
        yield edge
    finally:
        for close in edge.closers:
            close()
        channel.close()
        server.stop()
        if db_urls is not None:
            for _ in db_urls:  # drops the throwaway database
                pass


def refused(call: Callable[[], Any]) -> grpc.RpcError:
    """Run ``call`` and return the RpcError it must raise."""
    with pytest.raises(grpc.RpcError) as caught:
        result = call()
        if isinstance(result, Iterator):  # server streams fail on the first read
            list(result)
    return caught.value


def assert_status(error: grpc.RpcError, code: grpc.StatusCode, *needles: str) -> str:
    assert isinstance(error, grpc.Call)
    assert error.code() == code, (error.code(), error.details())
    details = error.details() or ""
    for needle in needles:
        assert needle in details, details
    return details


# ---- builders -----------------------------------------------------------------------------


def spec(**overrides: Any) -> common_pb2.StepSpec:
    """A valid step spec. By default it targets agents no test connects: the server is shared
    by the whole module (in random order), and a step some test leaves queued must not take
    the slot of an agent a later test connects to receive its own step."""
    values: dict[str, Any] = {
        "name": "work",
        "module": "flows",
        "function": "work",
        "target": "queue=parked",
        "provider": "process",
    }
    values.update(overrides)
    return common_pb2.StepSpec(**values)


def submission(key: str = "work#1", inputs: str = "", **spec_overrides: Any) -> Any:
    return control_pb2.StepSubmission(
        key=key,
        spec=spec(**spec_overrides),
        inputs_json=inputs or json.dumps({"args": [1], "kwargs": {}}),
    )


def chunk(sha256: str = "", total_size: int = 0, data: bytes = b"") -> common_pb2.BundleChunk:
    return common_pb2.BundleChunk(sha256=sha256, total_size=total_size, data=data)


def upload(edge: Edge, data: bytes | None = None) -> str:
    data = os.urandom(1024) if data is None else data
    sha = hashlib.sha256(data).hexdigest()
    edge.control.UploadBundle(iter([chunk(sha, len(data), data)]), timeout=CALL_TIMEOUT_S)
    return sha


def new_run(edge: Edge, bundle_sha256: str | None = None, flow_name: str = "edge_flow") -> str:
    response = edge.control.CreateRun(
        control_pb2.CreateRunRequest(
            flow_name=flow_name,
            entrypoint="flows.py:edge_flow",
            parameters_json="{}",
            bundle_sha256=bundle_sha256 or upload(edge),
            trigger="api",
        ),
        timeout=CALL_TIMEOUT_S,
    )
    return response.flow_run_id


def submit(edge: Edge, run_id: str, *steps: Any) -> control_pb2.SubmitStepsResponse:
    return edge.control.SubmitSteps(
        control_pb2.SubmitStepsRequest(flow_run_id=run_id, steps=list(steps)),
        timeout=CALL_TIMEOUT_S,
    )


@pytest.fixture
def run_id(edge: Edge) -> str:
    return new_run(edge)


# ---- SubmitSteps --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        ({"target": "cloud in (aws"}, ("'bad#1'", "cloud in (aws", "position")),
        ({"target": "cloud=aws,,region=x"}, ("empty requirement",)),
        ({"provider": "Not A Provider!"}, ("provider", "'Not A Provider!'")),
        ({"provider": ""}, ("provider",)),
        ({"module": "flows;rm -rf"}, ("module", "dotted Python name")),
        ({"function": ""}, ("function",)),
        ({"name": ""}, ("name must be",)),
        ({"retries": MAX_RETRIES + 1}, ("retries must be between 0 and",)),
        ({"retry_delay_s": -1.0}, ("retry_delay_s",)),
        ({"timeout_s": float("nan")}, ("timeout_s",)),
        ({"schedule_timeout_s": float("inf")}, ("schedule_timeout_s",)),
        ({"retry_backoff": 0.5}, ("retry_backoff",)),
        ({"retry_jitter": 2.0}, ("retry_jitter",)),
        ({"options_json": "[1, 2]"}, ("options must be a JSON object",)),
        ({"options_json": "{nope"}, ("not valid JSON",)),
        ({"retry_on": ["x"] * 65}, ("retry_on",)),
        ({"isolation": "thread"}, ("isolation must be 'warm' or 'process'", "'thread'")),
    ],
    ids=lambda v: next(iter(v)) if isinstance(v, dict) else None,
)
def test_submit_refuses_bad_specs(
    edge: Edge, run_id: str, overrides: dict[str, Any], needles: tuple[str, ...]
) -> None:
    error = refused(lambda: submit(edge, run_id, submission("bad#1", **overrides)))
    assert_status(error, grpc.StatusCode.INVALID_ARGUMENT, *needles)


@pytest.mark.parametrize(
    ("inputs", "needles"),
    [
        ("not json", ("inputs_json is not valid JSON",)),
        ("[1, 2]", ('{"args": [...], "kwargs": {...}}',)),
        ('{"args": [], "extra": 1}', ('{"args": [...], "kwargs": {...}}',)),
    ],
)
def test_submit_refuses_malformed_inputs(
    edge: Edge, run_id: str, inputs: str, needles: tuple[str, ...]
) -> None:
    error = refused(lambda: submit(edge, run_id, submission("in#1", inputs=inputs)))
    assert_status(error, grpc.StatusCode.INVALID_ARGUMENT, "'in#1'", *needles)


def test_submit_refuses_inputs_above_the_limit_naming_the_fix(edge: Edge, run_id: str) -> None:
    big = json.dumps({"args": ["x" * (MAX_INPUTS_BYTES + 1)], "kwargs": {}})
    error = refused(lambda: submit(edge, run_id, submission("big#1", inputs=big)))
    assert_status(
        error, grpc.StatusCode.INVALID_ARGUMENT, "'big#1'", str(MAX_INPUTS_BYTES), "reference"
    )


def test_a_message_above_the_server_limit_is_resource_exhausted(edge: Edge, run_id: str) -> None:
    huge = json.dumps({"args": ["x" * (edge.config.max_message_bytes + 1)], "kwargs": {}})
    error = refused(lambda: submit(edge, run_id, submission("huge#1", inputs=huge)))
    assert_status(error, grpc.StatusCode.RESOURCE_EXHAUSTED)


@pytest.mark.parametrize(
    ("key", "needle"),
    [("", "step key must be"), ("k" * 513, "step key must be")],
    ids=["empty", "too-long"],
)
def test_submit_refuses_bad_keys(edge: Edge, run_id: str, key: str, needle: str) -> None:
    error = refused(lambda: submit(edge, run_id, submission(key)))
    assert_status(error, grpc.StatusCode.INVALID_ARGUMENT, needle)


CACHE_KEY = "ck1-" + "0" * 64


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"cache_key": "k" * 129}, "cache_key must be 1-128 characters"),
        ({"cache_key": "has space"}, "cache_key must be 1-128 characters"),
        ({"cache_key": "-leading"}, "cache_key must be 1-128 characters"),
        ({"cache_key": CACHE_KEY, "cache_expires_after_s": -1.0}, "cache_expires_after_s"),
        ({"cache_key": CACHE_KEY, "cache_expires_after_s": float("inf")}, "cache_expires_after_s"),
        ({"cache_key": CACHE_KEY, "cache_expires_after_s": float("nan")}, "cache_expires_after_s"),
        ({"cache_key": CACHE_KEY, "cache_expires_after_s": 1e12}, "cache_expires_after_s"),
    ],
    ids=["long", "space", "leading-dash", "negative", "inf", "nan", "too-long"],
)
def test_submit_refuses_bad_cache_fields(
    edge: Edge, run_id: str, fields: dict[str, Any], needle: str
) -> None:
    step = submission("cached#1")
    for name, value in fields.items():
        setattr(step, name, value)
    error = refused(lambda: submit(edge, run_id, step))
    assert_status(error, grpc.StatusCode.INVALID_ARGUMENT, "'cached#1'", needle)


def test_a_batch_needs_one_cache_key_per_call_or_none(edge: Edge, run_id: str) -> None:
    batch = control_pb2.StepBatch(
        spec=spec(),
        keys=["m#1", "m#2"],
        inputs_json=[json.dumps({"args": [i], "kwargs": {}}) for i in (1, 2)],
        cache_keys=[CACHE_KEY],
    )
    request = control_pb2.SubmitStepsRequest(flow_run_id=run_id, batches=[batch])
    error = refused(lambda: edge.control.SubmitSteps(request, timeout=CALL_TIMEOUT_S))
    assert_status(error, grpc.StatusCode.INVALID_ARGUMENT, "2 keys but 1 cache keys")


def test_a_cached_call_without_an_earlier_result_is_queued(edge: Edge, run_id: str) -> None:
    step = submission("cached#1")
    step.cache_key, step.cache_expires_after_s = "ck1-" + "1" * 64, 60.0
    answer = submit(edge, run_id, step).steps[0]
    assert (answer.state, answer.existing) == ("PENDING", False)


def test_submit_without_steps_or_run(edge: Edge, run_id: str) -> None:
    assert_status(
        refused(lambda: submit(edge, run_id)), grpc.StatusCode.INVALID_ARGUMENT, "no steps"
    )
    assert_status(
        refused(lambda: submit(edge, "", submission())),
        grpc.StatusCode.INVALID_ARGUMENT,
        "flow_run_id is required",
    )


def test_submit_to_an_unknown_run_is_not_found(edge: Edge) -> None:
    error = refused(lambda: submit(edge, "no-such-run", submission()))
    assert_status(error, grpc.StatusCode.NOT_FOUND, "no-such-run", "does not exist")


def test_a_key_reused_with_other_inputs_is_a_conflict(edge: Edge, run_id: str) -> None:
    first = submit(edge, run_id, submission("same#1", inputs='{"args": [1], "kwargs": {}}'))
    again = submit(edge, run_id, submission("same#1", inputs='{"args": [1], "kwargs": {}}'))
    assert again.steps[0].existing and again.steps[0].step_run_id == first.steps[0].step_run_id
    error = refused(
        lambda: submit(edge, run_id, submission("same#1", inputs='{"args": [2], "kwargs": {}}'))
    )
    assert_status(error, grpc.StatusCode.FAILED_PRECONDITION, "'same#1'", "different inputs")


def test_one_bad_step_refuses_the_whole_batch(edge: Edge, run_id: str) -> None:
    error = refused(
        lambda: submit(edge, run_id, submission("ok#1"), submission("bad#1", target="a in ("))
    )
    assert_status(error, grpc.StatusCode.INVALID_ARGUMENT, "'bad#1'")
    run = edge.control.GetRun(control_pb2.GetRunRequest(flow_run_id=run_id), timeout=10)
    assert [s.key for s in run.steps] == []


def test_submit_after_the_run_ended_is_a_conflict(edge: Edge, run_id: str) -> None:
    edge.control.FinishRun(
        control_pb2.FinishRunRequest(flow_run_id=run_id, succeeded=True, result_json="1"),
        timeout=CALL_TIMEOUT_S,
    )
    error = refused(lambda: submit(edge, run_id, submission("late#1")))
    assert_status(error, grpc.StatusCode.FAILED_PRECONDITION, "COMPLETED", "only RUNNING")


DEEP = "[" * 5000 + "]" * 5000  # nesting deeper than Python's JSON decoder recursion limit


@pytest.mark.parametrize(
    "field",
    [
        "inputs_json",
        "options_json",
        "parameters_json",
        "result_json",
    ],
)
def test_deeply_nested_json_is_invalid_argument(edge: Edge, run_id: str, field: str) -> None:
    calls: dict[str, Callable[[], Any]] = {
        "inputs_json": lambda: submit(
            edge, run_id, submission("deep#1", inputs=f'{{"args": [{DEEP}], "kwargs": {{}}}}')
        ),
        "options_json": lambda: submit(
            edge, run_id, submission("deep#1", options_json=f'{{"a": {DEEP}}}')
        ),
        "parameters_json": lambda: edge.control.CreateRun(
            control_pb2.CreateRunRequest(
                flow_name="deep",
                entrypoint="flows.py:deep",
                parameters_json=f'{{"a": {DEEP}}}',
                bundle_sha256=upload(edge),
            ),
            timeout=10,
        ),
        "result_json": lambda: edge.control.FinishRun(
            control_pb2.FinishRunRequest(flow_run_id=run_id, succeeded=True, result_json=DEEP),
            timeout=10,
        ),
    }
    error = refused(calls[field])
    assert_status(error, grpc.StatusCode.INVALID_ARGUMENT, field.removesuffix("_json"))


# ---- CreateRun, FinishRun and reads -------------------------------------------------------


def test_create_run_for_a_bundle_never_uploaded_is_not_found(edge: Edge) -> None:
    missing = hashlib.sha256(b"never uploaded").hexdigest()
    error = refused(lambda: new_run(edge, bundle_sha256=missing))
    assert_status(error, grpc.StatusCode.NOT_FOUND, missing[:12], "uploaded")


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"bundle_sha256": "ABC"}, "bundle_sha256 must be 64 lowercase hex"),
        ({"flow_name": ""}, "flow_name must be"),
        ({"parameters_json": "[1]"}, "parameters_json must be a JSON object"),
        ({"parameters_json": "{oops"}, "parameters_json is not valid JSON"),
        ({"trigger": "t" * 65}, "trigger"),
    ],
    ids=lambda v: next(iter(v)) if isinstance(v, dict) else None,
)
def test_create_run_refuses_bad_requests(edge: Edge, fields: dict[str, str], needle: str) -> None:
    values = {
        "flow_name": "edge_flow",
        "entrypoint": "flows.py:edge_flow",
        "parameters_json": "{}",
        "bundle_sha256": "0" * 64,
        "trigger": "api",
    }
    values.update(fields)
    error = refused(
        lambda: edge.control.CreateRun(control_pb2.CreateRunRequest(**values), timeout=10)
    )
    assert_status(error, grpc.StatusCode.INVALID_ARGUMENT, needle)


def test_finish_run_twice_with_different_outcomes_is_a_conflict(edge: Edge, run_id: str) -> None:
    def finish(succeeded: bool) -> str:
        error = common_pb2.ErrorInfo(error_class="permanent", type="x.Y", message="no")
        request = control_pb2.FinishRunRequest(
            flow_run_id=run_id,
            succeeded=succeeded,
            result_json="42" if succeeded else "",
            error=None if succeeded else error,
        )
        return edge.control.FinishRun(request, timeout=CALL_TIMEOUT_S).state

    assert finish(True) == "COMPLETED"
    assert finish(True) == "COMPLETED"  # a retried call is harmless
    error = refused(lambda: finish(False))
    assert_status(error, grpc.StatusCode.FAILED_PRECONDITION, run_id, "already ended as COMPLETED")
    run = edge.control.GetRun(control_pb2.GetRunRequest(flow_run_id=run_id), timeout=10)
    assert run.state == "COMPLETED" and run.result_json == "42"


def test_finish_run_refuses_bad_input(edge: Edge, run_id: str) -> None:
    error = refused(
        lambda: edge.control.FinishRun(
            control_pb2.FinishRunRequest(flow_run_id=run_id, succeeded=True, result_json="{x"),
            timeout=10,
        )
    )
    assert_status(error, grpc.StatusCode.INVALID_ARGUMENT, "result_json")
    error = refused(
        lambda: edge.control.FinishRun(
            control_pb2.FinishRunRequest(flow_run_id="no-such-run", succeeded=True), timeout=10
        )
    )
    assert_status(error, grpc.StatusCode.NOT_FOUND, "no-such-run")


def test_reads_of_unknown_runs_are_not_found(edge: Edge) -> None:
    for call in (
        lambda: edge.control.GetRun(control_pb2.GetRunRequest(flow_run_id="zz-nope"), timeout=10),
        lambda: edge.control.GetLogs(control_pb2.GetLogsRequest(flow_run_id="zz-nope"), timeout=10),
        lambda: edge.control.WatchRun(
            control_pb2.WatchRunRequest(flow_run_id="zz-nope"), timeout=10
        ),
    ):
        assert_status(refused(call), grpc.StatusCode.NOT_FOUND, "zz-nope")


def test_watch_delivers_an_event_committed_after_a_later_one(edge: Edge) -> None:
    if edge.config.db_url is None:
        pytest.skip("SQLite runs one write transaction at a time: ids commit in order")
    run_id = new_run(edge)
    seen: list[str] = []
    stream = edge.control.WatchRun(control_pb2.WatchRunRequest(flow_run_id=run_id), timeout=30)
    watcher = threading.Thread(target=lambda: seen.extend(u.kind for u in stream), daemon=True)
    watcher.start()
    engine = make_engine(edge.config.database_url)
    try:
        # A transaction of another store worker: it records an event now, commits later.
        # run.retried stands for any event: nothing else records it on this run.
        with Session(engine) as slow, slow.begin():
            probe = Tx(slow, now=utcnow())
            record_event(probe, kind=EventKind.RUN_RETRIED, flow_run_id=run_id, message="probe")
            slow.flush()
            submit(edge, run_id, submission("w#1"))  # commits events with higher ids
            wait_until(lambda: "attempt.queued" in seen)
        edge.control.FinishRun(
            control_pb2.FinishRunRequest(flow_run_id=run_id, succeeded=True, result_json="1"),
            timeout=CALL_TIMEOUT_S,
        )
        watcher.join(timeout=30)
    finally:
        stream.cancel()
        engine.dispose()
    stored = edge.control.GetRun(control_pb2.GetRunRequest(flow_run_id=run_id), timeout=10)
    assert "run.retried" in [e.kind for e in stored.events]  # committed and readable...
    assert "run.completed" in seen
    assert "run.retried" in seen, seen  # ...and streamed to the watcher (it once was skipped)


def wait_until(check: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


# ---- UploadBundle -------------------------------------------------------------------------


def test_upload_declared_above_the_limit_is_resource_exhausted(edge: Edge) -> None:
    data = os.urandom(MAX_BUNDLE + 1)
    sha = hashlib.sha256(data).hexdigest()
    error = refused(
        lambda: edge.control.UploadBundle(iter([chunk(sha, len(data), data)]), timeout=10)
    )
    assert_status(error, grpc.StatusCode.RESOURCE_EXHAUSTED, str(MAX_BUNDLE))


def test_upload_larger_than_declared_is_resource_exhausted(edge: Edge) -> None:
    # A client that under-declares its size must still be cut off at the limit.
    data = os.urandom(MAX_BUNDLE + 1)
    sha = hashlib.sha256(data).hexdigest()
    chunks = [chunk(sha, 100, data[:50_000]), chunk(data=data[50_000:])]
    error = refused(lambda: edge.control.UploadBundle(iter(chunks), timeout=10))
    assert_status(error, grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than declared")


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda d: [chunk("0" * 64, len(d), d)], "does not match its declared sha256"),
        (lambda d: [chunk(hashlib.sha256(d).hexdigest(), len(d) + 5, d)], "declared sha256"),
        (lambda d: [chunk("", len(d), d)], "first chunk must carry the bundle's sha256"),
        (lambda d: [], "sha256"),
    ],
    ids=["wrong-hash", "short", "no-hash", "empty-stream"],
)
def test_upload_with_wrong_hash_or_size_is_invalid(
    edge: Edge, make: Callable[[bytes], list[common_pb2.BundleChunk]], needle: str
) -> None:
    data = os.urandom(2048)
    error = refused(lambda: edge.control.UploadBundle(iter(make(data)), timeout=10))
    assert_status(error, grpc.StatusCode.INVALID_ARGUMENT, needle)
    present = edge.control.HasBundle(
        control_pb2.HasBundleRequest(sha256=hashlib.sha256(data).hexdigest()), timeout=10
    )
    assert not present.present and present.max_size == MAX_BUNDLE


# ---- enrollment ---------------------------------------------------------------------------


def enroll_request(token: str, csr_pem: bytes | None = None, name: str = "edge-agent") -> Any:
    if csr_pem is None:
        _, csr_pem = generate_key_and_csr(name)
    return agent_pb2.EnrollRequest(join_token=token, csr_pem=csr_pem, name=name)


@pytest.mark.parametrize(
    ("token", "code", "needle"),
    [
        ("garbage", grpc.StatusCode.INVALID_ARGUMENT, "malformed join token"),
        ("x" * 600, grpc.StatusCode.INVALID_ARGUMENT, "too large"),
        ("mjt_0123456789abcdef." + "A" * 43, grpc.StatusCode.UNAUTHENTICATED, "not valid"),
    ],
    ids=["garbage", "oversized", "never-issued"],
)
def test_enroll_refuses_bad_tokens(
    edge: Edge, token: str, code: grpc.StatusCode, needle: str
) -> None:
    error = refused(lambda: edge.public_agent.Enroll(enroll_request(token), timeout=10))
    details = assert_status(error, code, needle)
    assert token not in details  # a pasted secret is never echoed


@pytest.mark.parametrize(
    "csr",
    [
        b"",
        b"not a csr",
        b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    ],
    ids=["empty", "text", "bad-pem"],
)
def test_enroll_refuses_a_garbage_csr_without_using_up_the_token(edge: Edge, csr: bytes) -> None:
    token = edge.token("edge-csr")
    error = refused(lambda: edge.public_agent.Enroll(enroll_request(token, csr), timeout=10))
    assert_status(error, grpc.StatusCode.INVALID_ARGUMENT)
    # The same token still works with a real CSR: a rejected request consumed nothing.
    response = edge.public_agent.Enroll(enroll_request(token), timeout=10)
    assert response.environment == "edge-csr" and response.certificate_pem


def test_enroll_refuses_used_and_expired_tokens(edge: Edge) -> None:
    token = edge.token("edge-once")
    edge.public_agent.Enroll(enroll_request(token), timeout=10)
    error = refused(lambda: edge.public_agent.Enroll(enroll_request(token), timeout=10))
    assert_status(error, grpc.StatusCode.UNAUTHENTICATED, "already used")
    expired = edge.token("edge-expired", ttl_s=0.001)
    error = refused(lambda: edge.public_agent.Enroll(enroll_request(expired), timeout=10))
    assert_status(error, grpc.StatusCode.UNAUTHENTICATED, "expired")


# ---- agent-only calls ---------------------------------------------------------------------


@dataclass
class EnrolledAgent:
    agent_id: str
    environment: str
    stub: agent_pb2_grpc.AgentServiceStub


def enrolled_agent(
    edge: Edge, environment: str, pinned: dict[str, str] | None = None
) -> EnrolledAgent:
    key_pem, csr_pem = generate_key_and_csr(f"{environment}-agent")
    token = edge.token(environment, labels=pinned)
    response = edge.public_agent.Enroll(
        enroll_request(token, csr_pem, f"{environment}-agent"), timeout=10
    )
    credentials = grpc.ssl_channel_credentials(
        root_certificates=edge.ca_pem,
        private_key=key_pem,
        certificate_chain=response.certificate_pem,
    )
    channel = grpc.secure_channel(edge.plane.agent_address, credentials)
    edge.closers.append(channel.close)
    return EnrolledAgent(
        response.agent_id, response.environment, agent_pb2_grpc.AgentServiceStub(channel)
    )


class AgentStream:
    """One Connect stream driven from the test: ``send`` frames, ``recv`` control frames."""

    def __init__(self, stub: agent_pb2_grpc.AgentServiceStub, timeout: float = 30.0) -> None:
        self._outbox: queue.Queue[agent_pb2.AgentFrame | None] = queue.Queue()
        self._frames = stub.Connect(iter(self._outbox.get, None), timeout=timeout)

    def send(self, frame: agent_pb2.AgentFrame) -> None:
        self._outbox.put(frame)

    def recv(self) -> agent_pb2.ControlFrame:
        frame: agent_pb2.ControlFrame = next(self._frames)
        return frame

    def recv_until(self, body: str) -> agent_pb2.ControlFrame:
        while True:
            frame = self.recv()
            if frame.WhichOneof("body") == body:
                return frame

    def close(self) -> None:
        self._outbox.put(None)
        self._frames.cancel()


def hello(
    site: str, capacity: int = 2, labels: dict[str, str] | None = None
) -> agent_pb2.AgentFrame:
    return agent_pb2.AgentFrame(
        hello=agent_pb2.Hello(
            version="test",
            labels={"site": site, **(labels or {})},
            providers=[agent_pb2.ProviderInfo(type="process")],
            capacity=capacity,
            hostname="edge-test",
        )
    )


def test_agent_calls_on_the_client_listener_are_unauthenticated(edge: Edge) -> None:
    error = refused(
        lambda: edge.public_agent.FetchBundle(
            agent_pb2.FetchBundleRequest(sha256="0" * 64), timeout=10
        )
    )
    assert_status(error, grpc.StatusCode.UNAUTHENTICATED, "client certificate", "agent enroll")
    error = refused(lambda: edge.public_agent.Connect(iter([hello("x")]), timeout=10))
    assert_status(error, grpc.StatusCode.UNAUTHENTICATED, "client certificate")


def test_the_agent_listener_refuses_a_client_without_a_certificate(edge: Edge) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=edge.ca_pem)
    with grpc.secure_channel(edge.plane.agent_address, credentials) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        error = refused(
            lambda: stub.FetchBundle(agent_pb2.FetchBundleRequest(sha256="0" * 64), timeout=10)
        )
    assert_status(error, grpc.StatusCode.UNAVAILABLE)


@pytest.mark.parametrize(
    ("first", "needle"),
    [
        (agent_pb2.AgentFrame(heartbeat=agent_pb2.Heartbeat()), "first frame must be Hello"),
        (agent_pb2.AgentFrame(), "first frame must be Hello"),
        (hello("x", capacity=20_000), "capacity must be between 1 and 10000"),
        (hello("x", labels={f"k{i}": "v" for i in range(70)}), "at most 64 labels"),
    ],
    ids=["heartbeat-first", "empty-first", "huge-capacity", "too-many-labels"],
)
def test_connect_refuses_a_bad_first_frame(
    edge: Edge, first: agent_pb2.AgentFrame, needle: str
) -> None:
    agent = enrolled_agent(edge, "edge-proto")
    error = refused(lambda: list(agent.stub.Connect(iter([first]), timeout=10)))
    assert_status(error, grpc.StatusCode.INVALID_ARGUMENT, needle)


@pytest.mark.parametrize(
    ("first", "needle"),
    [
        (hello("x", labels={"Bad Key": "v"}), "Bad Key"),
        (hello("x", labels={"big": "v" * 100_000}), "big"),
        (
            agent_pb2.AgentFrame(
                hello=agent_pb2.Hello(
                    version="t",
                    providers=[agent_pb2.ProviderInfo(type="Bad Provider!")],
                    capacity=1,
                )
            ),
            "Bad Provider!",
        ),
    ],
    ids=["label-key", "label-value-size", "provider-type"],
)
def test_connect_validates_hello_labels_and_providers(
    edge: Edge, first: agent_pb2.AgentFrame, needle: str
) -> None:
    agent = enrolled_agent(edge, "edge-hello")
    stream = AgentStream(agent.stub, timeout=10)
    try:
        stream.send(first)
        error = refused(stream.recv)  # a Welcome instead means the Hello was accepted
    finally:
        stream.close()
    assert_status(error, grpc.StatusCode.INVALID_ARGUMENT, needle)


def test_connect_closes_the_stream_on_an_unexpected_frame(edge: Edge) -> None:
    agent = enrolled_agent(edge, "edge-proto2")
    stream = AgentStream(agent.stub, timeout=20)
    try:
        stream.send(hello("proto2"))
        assert stream.recv().WhichOneof("body") == "welcome"
        stream.send(agent_pb2.AgentFrame())  # no body after Hello: a protocol error
        error = refused(lambda: stream.recv_until("never"))
        assert_status(error, grpc.StatusCode.INVALID_ARGUMENT, "unexpected empty frame")
    finally:
        stream.close()


@pytest.mark.parametrize(
    ("claimed", "needles"),
    [
        ({"site": "core"}, ("site", "fixed its labels to site=pinned")),
        ({"site": "pinned", "gpu": "a100"}, ("gpu",)),
    ],
    ids=["changed-value", "extra-label"],
)
def test_an_agent_cannot_claim_labels_beyond_what_its_token_pinned(
    edge: Edge, claimed: dict[str, str], needles: tuple[str, ...]
) -> None:
    """A hand-crafted agent whose join token pinned site=pinned can claim neither another
    site (to attract that site's work) nor extra labels."""
    agent = enrolled_agent(edge, "edge-pin", pinned={"site": "pinned"})
    bad = agent_pb2.AgentFrame(hello=agent_pb2.Hello(version="t", labels=claimed, capacity=1))
    error = refused(lambda: list(agent.stub.Connect(iter([bad]), timeout=10)))
    assert_status(error, grpc.StatusCode.PERMISSION_DENIED, *needles)


def test_pinned_labels_apply_even_when_the_agent_leaves_them_out(edge: Edge) -> None:
    agent = enrolled_agent(edge, "edge-pin2", pinned={"site": "pinned2", "zone": "z1"})
    stream = AgentStream(agent.stub)
    try:
        stream.send(
            agent_pb2.AgentFrame(
                hello=agent_pb2.Hello(
                    version="t",
                    labels={"zone": "z1"},
                    providers=[agent_pb2.ProviderInfo(type="process")],
                    capacity=1,
                )
            )
        )
        assert stream.recv().WhichOneof("body") == "welcome"
        run_id = new_run(edge)
        submit(edge, run_id, submission("pin#1", target="site=pinned2,zone=z1"))
        (assign,) = stream.recv_until("assign").assign.assignments
        assert assign.step_key == "pin#1"
    finally:
        stream.close()
    listed = edge.control.ListAgents(control_pb2.ListAgentsRequest(), timeout=10).agents
    (info,) = [a for a in listed if a.agent_id == agent.agent_id]
    assert dict(info.labels) == {"site": "pinned2", "zone": "z1"}


def test_bundles_and_reports_are_confined_to_the_agent_holding_the_attempt(edge: Edge) -> None:
    """Agent B (environment edge-b) is assigned a step; agent A (edge-a) may neither fetch
    that step's bundle nor report on its attempt; B may do both."""
    agent_a = enrolled_agent(edge, "edge-a")
    agent_b = enrolled_agent(edge, "edge-b")
    bundle = os.urandom(4096)
    sha = upload(edge, bundle)
    run_id = new_run(edge, sha)
    stream_b = AgentStream(agent_b.stub)
    stream_a = AgentStream(agent_a.stub)
    try:
        stream_b.send(hello("only-b"))
        assert stream_b.recv().welcome.environment == "edge-b"
        submit(edge, run_id, submission("b#1", target="site=only-b"))
        (assign,) = stream_b.recv_until("assign").assign.assignments
        assert assign.bundle_sha256 == sha and assign.step_key == "b#1"

        fetch = agent_pb2.FetchBundleRequest(sha256=sha)
        error = refused(lambda: agent_a.stub.FetchBundle(fetch, timeout=10))
        assert_status(error, grpc.StatusCode.NOT_FOUND, sha[:12], "not needed by any attempt")
        unknown = agent_pb2.FetchBundleRequest(sha256="f" * 64)
        assert_status(
            refused(lambda: agent_b.stub.FetchBundle(unknown, timeout=10)),
            grpc.StatusCode.NOT_FOUND,
        )
        fetched = b"".join(c.data for c in agent_b.stub.FetchBundle(fetch, timeout=10))
        assert fetched == bundle

        # A proposes RUNNING for B's attempt: rejected, and the attempt stays B's.
        stream_a.send(hello("a-site"))
        stream_a.recv_until("welcome")
        stream_a.send(running_report(1, assign))
        decision = stream_a.recv_until("decisions").decisions.decisions[0]
        assert decision.verdict == agent_pb2.VERDICT_REJECT and decision.reason
        stream_b.send(running_report(1, assign))
        decision = stream_b.recv_until("decisions").decisions.decisions[0]
        assert decision.verdict == agent_pb2.VERDICT_ACCEPT
    finally:
        stream_a.close()
        stream_b.close()
    run = edge.control.GetRun(control_pb2.GetRunRequest(flow_run_id=run_id), timeout=10)
    (attempt,) = run.steps[0].attempts
    assert attempt.agent_id == agent_b.agent_id and attempt.environment == "edge-b"
    assert any(e.kind == "report.rejected" for e in run.events)


def running_report(seq: int, assign: agent_pb2.Assign) -> agent_pb2.AgentFrame:
    return agent_pb2.AgentFrame(
        reports=agent_pb2.ReportBatch(
            reports=[
                agent_pb2.Report(
                    seq=seq,
                    attempt_id=assign.attempt_id,
                    fencing_token=assign.fencing_token,
                    running=agent_pb2.ProposeRunning(),
                )
            ]
        )
    )


# ---- and after all that -------------------------------------------------------------------


def test_zz_the_server_still_serves_after_every_bad_request(edge: Edge) -> None:
    health = health_pb2_grpc.HealthStub(edge.channel)
    for service in ("", "meridian.v1.ControlService", "meridian.v1.AgentService"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    info = edge.control.GetServerInfo(control_pb2.GetServerInfoRequest(), timeout=10)
    assert info.agent_address.endswith(edge.plane.agent_address.rsplit(":", 1)[1])
    run_id = new_run(edge, flow_name="after_all")
    submitted = submit(edge, run_id, submission("fine#1"))
    assert submitted.steps[0].state == "PENDING"
    runs = edge.control.ListRuns(control_pb2.ListRunsRequest(flow_name="after_all"), timeout=10)
    assert [r.flow_run_id for r in runs.runs] == [run_id]
