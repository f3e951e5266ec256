"""ControlClient against a fake ControlService: a real gRPC server over loopback TLS.

The fake (also used by test_sdk_runner.py) stands in for the control plane at the process
boundary. It "runs" submitted steps by importing them from the flow module already loaded in
this process and emits RunUpdates with a step_outcome, as the real control plane does once
an agent reports.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import itertools
import socket
import threading
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from meridian import (
    BundleError,
    ConflictError,
    ConnectionFailed,
    NotFound,
    PermissionDenied,
    ValidationError,
)
from meridian.client import ControlClient
from meridian.models import ErrorInfo, StepSpec, StepSubmission
from protos.meridian.v1 import common_pb2, control_pb2, control_pb2_grpc
from tests.support.deadlines import DEADLINE_S
from tests.support.tls import Tls, make_tls

# -- the fake control plane --------------------------------------------------------------------


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class FakeControl(control_pb2_grpc.ControlServiceServicer):
    """Just enough of the ControlService to drive the client and the flow runner."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.events: list[tuple[str, control_pb2.RunUpdate]] = []
        self.bundles: dict[str, bytes] = {}
        self.upload_chunks = 0
        self.max_size = 0
        self.runs: dict[str, control_pb2.CreateRunRequest] = {}
        self.finished: dict[str, control_pb2.FinishRunRequest] = {}
        self.submit_calls: list[list[str]] = []
        self.step_runs: dict[tuple[str, str], str] = {}
        self.watch_calls: list[int] = []
        self.watch_batched: list[bool] = []
        self.batch_watch = True  # False: answer like a server that does not batch
        self.batch_sizes: list[int] = []  # updates per batched message sent
        self.drop_batches = False  # True: ignore StepBatch like an older control plane
        self.batches_received: list[int] = []  # calls per StepBatch received
        self.break_watch_after: int | None = None  # abort the next stream after N updates
        self._ids = itertools.count(1)
        self._pool = ThreadPoolExecutor(max_workers=8)

    # bundles
    def HasBundle(self, request: Any, context: Any) -> Any:
        return control_pb2.HasBundleResponse(
            present=request.sha256 in self.bundles, max_size=self.max_size
        )

    def UploadBundle(self, request_iterator: Any, context: Any) -> Any:
        chunks = list(request_iterator)
        self.upload_chunks = len(chunks)
        data = b"".join(c.data for c in chunks)
        if len(data) != chunks[0].total_size:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bundle size mismatch")
        self.bundles[chunks[0].sha256] = data
        return control_pb2.UploadBundleResponse(sha256=chunks[0].sha256, size=len(data))

    # runs
    def CreateRun(self, request: Any, context: Any) -> Any:
        if not request.flow_name:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "flow_name is required")
        if request.bundle_sha256 not in self.bundles:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "bundle not uploaded")
        run_id = f"run-{next(self._ids)}"
        self.runs[run_id] = request
        return control_pb2.CreateRunResponse(flow_run_id=run_id)

    def SubmitSteps(self, request: Any, context: Any) -> Any:
        run_id = request.flow_run_id
        if run_id in self.finished:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"run {run_id} is finished")
        batched = [
            control_pb2.StepSubmission(key=key, spec=batch.spec, inputs_json=inputs)
            for batch in request.batches
            for key, inputs in zip(batch.keys, batch.inputs_json, strict=True)
        ]
        self.submit_calls.append([s.key for s in [*request.steps, *batched]])
        self.batches_received.extend(len(b.keys) for b in request.batches)
        answers = {s.key: self._submit(run_id, s) for s in [*request.steps, *batched]}
        response = control_pb2.SubmitStepsResponse(steps=[answers[s.key] for s in request.steps])
        if self.drop_batches:  # like a control plane that predates StepBatch
            return response
        for batch in request.batches:
            response.batches.add(
                step_run_ids=[answers[k].step_run_id for k in batch.keys],
                existing=[answers[k] for k in batch.keys if answers[k].existing],
            )
        return response

    def _submit(self, run_id: str, sub: Any) -> Any:
        existing = (run_id, sub.key) in self.step_runs
        if not existing:
            self.step_runs[(run_id, sub.key)] = f"sr-{next(self._ids)}"
            self._pool.submit(self._execute, run_id, sub, self.step_runs[(run_id, sub.key)])
        return control_pb2.SubmittedStep(
            key=sub.key,
            step_run_id=self.step_runs[(run_id, sub.key)],
            state="PENDING",
            existing=existing,
        )

    def _execute(self, run_id: str, sub: Any, step_run_id: str) -> None:
        import json

        outcome = control_pb2.StepOutcome(step_run_id=step_run_id, key=sub.key)
        try:
            target: Any = importlib.import_module(sub.spec.module)
            for part in sub.spec.function.split("."):
                target = getattr(target, part)
            fn = target.fn if getattr(target, "__meridian_step__", False) else target
            inputs = json.loads(sub.inputs_json)
            result = fn(*inputs["args"], **inputs["kwargs"])
            outcome.state, outcome.result_json = "COMPLETED", json.dumps(result)
        except Exception as exc:
            outcome.state = "FAILED"
            outcome.error.CopyFrom(
                common_pb2.ErrorInfo(
                    error_class="permanent",
                    type=_qualified(type(exc)),
                    message=str(exc),
                    traceback="".join(traceback.format_exception(exc)),
                )
            )
        kind = "step.completed" if outcome.state == "COMPLETED" else "step.failed"
        self.emit(run_id, kind=kind, step_key=sub.key, state=outcome.state, step_outcome=outcome)

    def emit(self, run_id: str, **fields: Any) -> None:
        with self.cond:
            update = control_pb2.RunUpdate(event_id=len(self.events) + 1, at_unix_ms=1, **fields)
            self.events.append((run_id, update))
            self.cond.notify_all()

    def WatchRun(self, request: Any, context: Any) -> Iterator[Any]:
        self.watch_calls.append(request.after_event_id)
        self.watch_batched.append(request.batched)
        break_after, self.break_watch_after = self.break_watch_after, None
        position, sent = request.after_event_id, 0
        while context.is_active():
            with self.cond:
                while position >= len(self.events) and context.is_active():
                    self.cond.wait(0.05)
                pending = self.events[position:]
                position = len(self.events)
            mine = [u for run_id, u in pending if run_id == request.flow_run_id]
            if break_after is not None:
                mine = mine[: break_after - sent]
            if request.batched and self.batch_watch and mine:
                # As the control plane does: many updates per message.
                self.batch_sizes.append(len(mine))
                yield control_pb2.RunUpdate(batch=mine)
            else:
                yield from mine
            sent += len(mine)
            if any(u.run_state for u in mine):
                return
            if break_after is not None and sent >= break_after:
                context.abort(grpc.StatusCode.UNAVAILABLE, "simulated stream break")

    def FinishRun(self, request: Any, context: Any) -> Any:
        if request.flow_run_id in self.finished:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "run already finished")
        self.finished[request.flow_run_id] = request
        state = "COMPLETED" if request.succeeded else "FAILED"
        self.emit(request.flow_run_id, kind=f"run.{state.lower()}", state=state, run_state=state)
        return control_pb2.FinishRunResponse(state=state)

    # reading
    def GetRun(self, request: Any, context: Any) -> Any:
        if request.flow_run_id.startswith("abort:"):
            context.abort(getattr(grpc.StatusCode, request.flow_run_id[6:]), "told to fail")
        attempt = control_pb2.AttemptDetail(
            attempt_id="a1",
            number=1,
            state="FAILED",
            environment="aws-demo",
            queued_at_unix_ms=1_700_000_000_000,
            error=common_pb2.ErrorInfo(error_class="transient", type="builtins.OSError"),
            recovered=True,
        )
        step = control_pb2.StepRunDetail(step_run_id="sr", key="a#1", name="a", attempts=[attempt])
        event = control_pb2.RunEvent(event_id=1, at_unix_ms=1_700_000_000_000, kind="run.created")
        return control_pb2.RunDetail(
            flow_run_id=request.flow_run_id, state="RUNNING", steps=[step], events=[event]
        )

    def ListRuns(self, request: Any, context: Any) -> Any:
        return control_pb2.ListRunsResponse(
            runs=[control_pb2.RunSummary(flow_run_id="r1", flow_name="f", steps_total=2)]
        )

    def GetLogs(self, request: Any, context: Any) -> Any:
        line = control_pb2.StepLogLine(
            id=5,
            step_key="a#1",
            attempt_number=1,
            line=common_pb2.LogLine(stream="stdout", text="hi"),
        )
        return control_pb2.GetLogsResponse(lines=[line], next_after_id=5)

    def ListAgents(self, request: Any, context: Any) -> Any:
        agent = control_pb2.AgentInfo(
            agent_id="ag1", name="a", labels={"cloud": "aws"}, providers=["process"], capacity=4
        )
        return control_pb2.ListAgentsResponse(agents=[agent])


@dataclass
class FakeServer:
    fake: FakeControl
    address: str
    ca_file: Path
    tls: Tls


@contextlib.contextmanager
def serve_fake(tls: Tls, directory: Path) -> Iterator[FakeServer]:
    """Run a FakeControl on a free loopback port with TLS; the CA file goes in ``directory``."""
    fake = FakeControl()
    server = grpc.server(ThreadPoolExecutor(max_workers=16))
    control_pb2_grpc.add_ControlServiceServicer_to_server(fake, server)
    credentials = grpc.ssl_server_credentials([(tls.key_pem, tls.cert_pem)])
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    ca_file = directory / "ca.crt"
    ca_file.write_bytes(tls.ca_pem)
    try:
        yield FakeServer(fake, f"127.0.0.1:{port}", ca_file, tls)
    finally:
        server.stop(grace=None)
        fake._pool.shutdown(wait=False, cancel_futures=True)


# The fixtures ``fake_server`` and ``client`` come from tests/meridian/conftest.py.


# -- tests -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Bundle:
    sha256: str
    data: bytes


def test_bundle_upload_is_chunked_and_skipped_when_present(
    client: ControlClient, fake_server: FakeServer
) -> None:
    bundle = _Bundle("abc", b"x" * (2 * 1024 * 1024 + 10))
    assert not client.has_bundle("abc")
    client.ensure_bundle(bundle)
    assert fake_server.fake.upload_chunks == 3
    assert fake_server.fake.bundles["abc"] == bundle.data
    fake_server.fake.upload_chunks = 0
    client.ensure_bundle(bundle)
    assert fake_server.fake.upload_chunks == 0


def test_bundle_over_the_server_limit_is_refused_before_upload(
    client: ControlClient, fake_server: FakeServer
) -> None:
    fake_server.fake.max_size = 10
    with pytest.raises(BundleError, match="at most 10"):
        client.ensure_bundle(_Bundle("big", b"y" * 11))
    assert "big" not in fake_server.fake.bundles


def test_run_lifecycle_round_trip(client: ControlClient, fake_server: FakeServer) -> None:
    client.upload_bundle(_Bundle("sha", b"data"))
    run_id = client.create_run("f", "flows.py:f", {"n": 1}, "sha")
    assert fake_server.fake.runs[run_id].parameters_json == '{"n": 1}'
    spec = StepSpec(name="math", module="math", function="sqrt", retry_on=("builtins.ValueError",))
    answers = client.submit_steps(
        run_id, [StepSubmission("sqrt#1", spec, '{"args":[16],"kwargs":{}}')]
    )
    assert answers[0].key == "sqrt#1" and answers[0].step_run_id.startswith("sr-")
    stream = client.watch_run(run_id)
    first = next(stream)
    assert first.step_outcome is not None
    assert first.step_outcome.state == "COMPLETED" and first.step_outcome.result_json == "4.0"
    assert first.step_outcome.error is None
    error = ErrorInfo("permanent", "builtins.ValueError", "bad", "tb", ("builtins.ValueError",))
    assert client.finish_run(run_id, False, error=error) == "FAILED"
    last = next(stream)
    assert last.run_state == "FAILED"
    assert list(stream) == []
    recorded = fake_server.fake.finished[run_id]
    assert recorded.error.type == "builtins.ValueError" and list(recorded.error.type_mro) == [
        "builtins.ValueError"
    ]


def test_calls_sharing_a_spec_travel_as_one_batch_and_answers_keep_their_order(
    client: ControlClient, fake_server: FakeServer
) -> None:
    client.upload_bundle(_Bundle("sha", b"data"))
    run_id = client.create_run("f", "flows.py:f", {}, "sha")
    sqrt = StepSpec(name="math", module="math", function="sqrt")
    floor = StepSpec(name="floor", module="math", function="floor")
    subs = [
        StepSubmission("floor#1", floor, '{"args":[1.5],"kwargs":{}}'),
        *(StepSubmission(f"sqrt#{i}", sqrt, f'{{"args":[{i}],"kwargs":{{}}}}') for i in (1, 4, 9)),
    ]
    answers = client.submit_steps(run_id, subs)
    assert [a.key for a in answers] == ["floor#1", "sqrt#1", "sqrt#4", "sqrt#9"]
    assert all(a.step_run_id.startswith("sr-") and not a.existing for a in answers)
    assert fake_server.fake.batches_received == [3]  # the single call went as before
    again = client.submit_steps(run_id, subs[1:])
    assert [a.existing for a in again] == [True, True, True]
    assert [a.step_run_id for a in again] == [a.step_run_id for a in answers[1:]]


def test_a_control_plane_that_drops_batches_is_an_error_not_a_silent_loss(
    client: ControlClient, fake_server: FakeServer
) -> None:
    fake_server.fake.drop_batches = True
    client.upload_bundle(_Bundle("sha", b"data"))
    run_id = client.create_run("f", "flows.py:f", {}, "sha")
    sqrt = StepSpec(name="math", module="math", function="sqrt")
    subs = [StepSubmission(f"sqrt#{i}", sqrt, '{"args":[1],"kwargs":{}}') for i in (1, 2)]
    with pytest.raises(ConflictError, match="older than this SDK"):
        client.submit_steps(run_id, subs)


def test_watch_run_gives_one_update_at_a_time_from_a_batched_stream(
    client: ControlClient, fake_server: FakeServer
) -> None:
    for i in range(3):
        fake_server.fake.emit("run-w", kind="step.pending", step_key=f"s#{i}")
    fake_server.fake.emit("run-w", kind="run.completed", run_state="COMPLETED")
    updates = list(client.watch_run("run-w"))
    assert [u.event_id for u in updates] == [1, 2, 3, 4]
    assert fake_server.fake.watch_batched == [True] and fake_server.fake.batch_sizes == [4]
    batches = list(client.watch_run_batches("run-w", 2))
    assert [[u.event_id for u in b] for b in batches] == [[3, 4]]


def test_reading_calls_convert_to_models(client: ControlClient) -> None:
    detail = client.get_run("run-x")
    attempt = detail.steps[0].attempts[0]
    assert attempt.queued_at == dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=dt.UTC)
    assert attempt.started_at is None and attempt.recovered
    assert attempt.error is not None and attempt.error.error_class == "transient"
    assert detail.error is None and detail.events[0].kind == "run.created"
    assert client.list_runs()[0].steps_total == 2
    page = client.get_logs("r1")
    assert page.next_after_id == 5 and page.lines[0].line.text == "hi"
    agent = client.list_agents()[0]
    assert agent.labels == {"cloud": "aws"} and agent.providers == ("process",)


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("INVALID_ARGUMENT", ValidationError),
        ("NOT_FOUND", NotFound),
        ("FAILED_PRECONDITION", ConflictError),
        ("ALREADY_EXISTS", ConflictError),
        ("PERMISSION_DENIED", PermissionDenied),
        ("UNAUTHENTICATED", PermissionDenied),
        ("RESOURCE_EXHAUSTED", ValidationError),
    ],
)
def test_status_codes_map_to_meridian_errors(
    client: ControlClient, code: str, error: type[Exception]
) -> None:
    with pytest.raises(error, match="told to fail"):
        client.get_run(f"abort:{code}")


def test_wrong_ca_is_a_connection_failure_naming_the_ca_file(
    fake_server: FakeServer, tmp_path: Path
) -> None:
    other_ca = tmp_path / "other-ca.crt"
    other_ca.write_bytes(make_tls().ca_pem)
    with (
        ControlClient(fake_server.address, other_ca, timeout_s=DEADLINE_S) as c,
        pytest.raises(ConnectionFailed) as info,
    ):
        c.list_agents()
    assert str(other_ca) in str(info.value)
    assert fake_server.address in str(info.value)


def test_unreachable_control_plane_is_a_connection_failure(fake_server: FakeServer) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with (
        ControlClient(f"127.0.0.1:{port}", fake_server.ca_file, timeout_s=DEADLINE_S) as c,
        pytest.raises(ConnectionFailed) as info,
    ):
        c.list_runs()
    assert f"cannot reach the control plane at 127.0.0.1:{port}" in str(info.value)
    assert "MERIDIAN_CONTROL_PLANE" in str(info.value)


def test_missing_or_bad_ca_file_is_a_validation_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.crt"
    with pytest.raises(ValidationError, match=str(missing)):
        ControlClient("127.0.0.1:1", missing)
    junk = tmp_path / "junk.crt"
    junk.write_text("not a certificate")
    with pytest.raises(ValidationError, match="PEM certificate"):
        ControlClient("127.0.0.1:1", junk)
