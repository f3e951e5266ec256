"""The gcp-cloud-run provider: contract tests of the real ``google-cloud-run`` async clients
against our own gRPC fake of the Cloud Run Admin API (``tests/providers/gcp_run_fake.py``).

What is real: the official client library (request building, gRPC transport, routing headers,
long-running-operation polling through ``GetOperation``, error mapping to
``google.api_core.exceptions``) and the protobuf wire format. What is ours: the service. No
Cloud Run emulator exists and no container runs here, so:

- the conformance suite runs with the fake in ``run_locally`` mode: the fake starts the
  container's args (``meridian-step --spec-env MERIDIAN_STEP_SPEC``) as a local subprocess with
  the env from the RunJob overrides, and its stdout/stderr stand in for Cloud Logging (read
  through ``FakeLogSource``). That proves the provider's wiring end to end (spec env, result
  marker, exit codes, cancel, timeout, logs, recover) but not images, IAM or Cloud Run timing;
- the other tests script executions (outcome, exit code, duration, log lines) and check the
  exact API calls;
- ``CloudLoggingSource`` (the production log reader) is tested against a local fake of the
  Cloud Logging REST method ``entries:list`` with ``google.auth``'s real ``AuthorizedSession``.
Nothing here talks to Google.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
import threading
import time
from collections.abc import Awaitable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest

pytest.importorskip("google.cloud.run_v2", reason="install meridian-orchestrator[gcp]")

import grpc
from google.auth.credentials import AnonymousCredentials

from providers.base import (
    ExecutionSpec,
    Handle,
    Provider,
    ProviderError,
    ProviderOptionsError,
)
from providers.gcp_cloud_run import CloudRunProvider
from providers.gcp_cloud_run import client as gcp_client
from providers.gcp_cloud_run.config import STEP_ARGS, CloudRunConfig
from providers.gcp_cloud_run.logs import (
    CloudLoggingSource,
    format_timestamp_ns,
    parse_timestamp_ns,
)
from providers.registry import load_provider
from providers.testing import ProviderConformance
from tests.providers.gcp_run_fake import FakeCloudRun, FakeLogSource, Plan

pytestmark = pytest.mark.contract

T = TypeVar("T")
JOB = "projects/proj/locations/europe-west1/jobs/meridian-steps"
MARKER = "::meridian-outcome::"


@pytest.fixture
def fake() -> Iterator[FakeCloudRun]:
    service = FakeCloudRun()
    service.start()
    service.add_job("meridian-steps")
    yield service
    service.stop()


def config(fake: FakeCloudRun, **overrides: Any) -> dict[str, Any]:
    return {
        "project": "proj",
        "region": "europe-west1",
        "job": "meridian-steps",
        "container_name": "step",
        "endpoint": fake.address,
        "insecure": True,
        "poll_interval_s": 0.05,
        "kill_grace_s": 2.0,
        "log_settle_s": 0.5,
        "log_source": FakeLogSource(fake),
        **overrides,
    }


def spec(tmp_path: Path, *, timeout_s: float | None = None, **options: Any) -> ExecutionSpec:
    return ExecutionSpec(
        attempt_id="att-1",
        flow_run_id="run-1",
        step_run_id="sr-1",
        step_key="train#1",
        step_name="train",
        attempt_number=1,
        module="pipeline",
        function="train",
        inputs_json='{"args": [1], "kwargs": {}}',
        bundle_dir=None,
        work_dir=tmp_path / "work",
        timeout_s=timeout_s,
        options=options,
        env={"FROM_SPEC": "yes"},
    )


def run(coro: Awaitable[T], limit_s: float = 20.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, limit_s)

    return asyncio.run(bounded())


def marker(doc: dict[str, Any]) -> str:
    return MARKER + json.dumps(doc)


async def submit_wait(provider: Provider, step: ExecutionSpec) -> Any:
    try:
        handle = await provider.submit(step)
        return handle, await provider.wait(handle)
    finally:
        await provider.close()


# ---- conformance: the fake runs the step locally ----------------------------------------


class TestCloudRunConformance(ProviderConformance):
    shares_filesystem = True  # the fake runs the container's args on this machine
    returns_result_files = False  # the outcome comes back in the execution's logs
    scenario_timeout_s = 20.0
    invalid_options = (
        {"command": "echo hi"},
        {"command": []},
        {"task_count": 0},
        {"task_count": True},
        {"task_count": 2},  # a Python step is one call
        {"env": {"A": 1}},
        {"env": {"MERIDIAN_ATTEMPT_ID": "x"}},
        {"code_dir": "relative"},
        {"image": "gcr.io/p/i"},
        {"job": ""},
    )
    valid_options = (
        {},
        {"command": ["echo", "hi"], "task_count": 3},
        {"env": {"A": "b"}, "job": "other", "code_dir": "/srv/app"},
    )

    @pytest.fixture
    def provider(self, fake: FakeCloudRun, bundle: Path) -> Provider:
        fake.default_plan = Plan(run_locally=True)
        self.fake = fake
        return CloudRunProvider(config(fake, code_dir=str(bundle)))

    async def assert_stopped(self, provider: Provider, handle: Handle) -> None:
        ex = self.fake.executions[handle.resource_id]
        assert ex.state == "cancelled" and ex.proc is not None and ex.proc.poll() is not None
        assert self.fake.calls_of("CancelExecution")


# ---- the API calls -----------------------------------------------------------------------


def test_run_job_request_carries_overrides(fake: FakeCloudRun, tmp_path: Path) -> None:
    fake.plan(duration_s=0.0, stdout=[marker({"state": "succeeded", "result_json": "7"})])
    provider = CloudRunProvider(config(fake))
    handle, outcome = run(submit_wait(provider, spec(tmp_path, timeout_s=90.5, env={"K": "v"})))

    (request,) = fake.calls_of("RunJob")
    assert request.name == JOB
    (override,) = request.overrides.container_overrides
    assert override.name == "step"
    assert list(override.args) == list(STEP_ARGS)
    env = {var.name: var.value for var in override.env}
    assert env["MERIDIAN_ATTEMPT_ID"] == "att-1"
    assert env["MERIDIAN_FLOW_RUN_ID"] == "run-1"
    assert env["MERIDIAN_STEP_KEY"] == "train#1"
    assert env["K"] == "v" and env["FROM_SPEC"] == "yes"
    assert json.loads(env["MERIDIAN_STEP_SPEC"]) == {
        "module": "pipeline",
        "function": "train",
        "inputs_json": '{"args": [1], "kwargs": {}}',
        "bundle_dir": "/app",
        "step_key": "train#1",
    }
    assert request.overrides.task_count == 1
    assert request.overrides.timeout == dt.timedelta(seconds=91)

    assert handle.resource_id.startswith(JOB + "/executions/meridian-steps-")
    assert handle.resource_id in fake.executions
    assert Handle.from_json(handle.to_json()) == handle
    assert outcome.state == "succeeded" and outcome.result_json == "7" and outcome.exit_code == 0


def test_command_step_uses_args_task_count_and_exit_code(
    fake: FakeCloudRun, tmp_path: Path
) -> None:
    fake.plan(duration_s=0.1)
    provider = CloudRunProvider(config(fake, log_source=None))  # commands need no log reader
    step = spec(tmp_path, command=["python", "train.py", "--fast"], task_count=3, job="other")
    fake.add_job("other")
    _, outcome = run(submit_wait(provider, step))

    (request,) = fake.calls_of("RunJob")
    assert request.name.endswith("/jobs/other")
    override = request.overrides.container_overrides[0]
    assert list(override.args) == ["python", "train.py", "--fast"]
    assert "MERIDIAN_STEP_SPEC" not in {var.name for var in override.env}
    assert request.overrides.task_count == 3
    assert not request.overrides.timeout
    assert outcome.state == "succeeded" and outcome.result_json == "null" and outcome.exit_code == 0


def test_execution_name_comes_from_polled_operation_and_logs_stream(
    fake: FakeCloudRun, tmp_path: Path
) -> None:
    lines = ["loading", "training", marker({"state": "succeeded", "result_json": '{"acc": 1}'})]
    fake.plan(duration_s=0.3, stdout=lines, stderr=["warn"], metadata_after_polls=2)
    provider = CloudRunProvider(config(fake))

    async def scenario() -> Any:
        handle = await provider.submit(spec(tmp_path))
        records = asyncio.create_task(_collect(provider, handle))
        outcome = await provider.wait(handle)
        return handle, outcome, await records

    _, outcome, records = run(scenario())
    assert len(fake.calls_of("GetOperation")) >= 2  # operation metadata arrived on a poll
    assert outcome.result_json == '{"acc": 1}'
    assert [r.text for r in records if r.stream == "stdout"] == lines
    assert [r.text for r in records if r.stream == "stderr"] == ["warn"]
    assert all(r.at_unix_ms > 0 for r in records)


async def _collect(provider: Provider, handle: Handle) -> list[Any]:
    return [record async for record in provider.logs(handle)]


def test_step_failure_keeps_class_and_exit_code(fake: FakeCloudRun, tmp_path: Path) -> None:
    error = {"error_class": "permanent", "type": "pipeline.BadData", "message": "row 3"}
    fake.plan(outcome="failed", exit_code=1, stdout=[marker({"state": "failed", "error": error})])
    _, outcome = run(submit_wait(CloudRunProvider(config(fake)), spec(tmp_path)))
    assert outcome.state == "failed" and outcome.exit_code == 1
    assert outcome.error is not None and outcome.error.error_class == "permanent"
    assert outcome.error.type == "pipeline.BadData" and outcome.error.message == "row 3"
    assert fake.calls_of("ListTasks")[0].parent.startswith(JOB + "/executions/")


def test_exit_without_outcome_is_transient_with_exit_code(
    fake: FakeCloudRun, tmp_path: Path
) -> None:
    fake.plan(outcome="failed", exit_code=137, stderr=["Killed"])
    _, outcome = run(submit_wait(CloudRunProvider(config(fake)), spec(tmp_path)))
    assert outcome.state == "failed" and outcome.exit_code == 137
    assert outcome.error is not None and outcome.error.error_class == "transient"
    assert "exited with code 137" in outcome.error.message
    assert "failed with exit code 137" in outcome.error.message  # Cloud Run's condition message


def test_success_without_marker_is_infrastructure(fake: FakeCloudRun, tmp_path: Path) -> None:
    fake.plan(stdout=["no marker here"])
    started = time.monotonic()
    _, outcome = run(submit_wait(CloudRunProvider(config(fake)), spec(tmp_path)))
    assert outcome.state == "failed" and outcome.error is not None
    assert outcome.error.error_class == "infrastructure"
    assert MARKER in outcome.error.message and "0.5 s" in outcome.error.message
    assert time.monotonic() - started >= 0.5  # it waited for Cloud Logging to catch up


def test_late_log_lines_are_waited_for(fake: FakeCloudRun, tmp_path: Path) -> None:
    fake.plan(duration_s=0.1, stdout=[marker({"state": "succeeded", "result_json": "1"})])
    provider = CloudRunProvider(config(fake, log_settle_s=5.0, log_source=FakeLogSource(fake, 1.0)))
    _, outcome = run(submit_wait(provider, spec(tmp_path)))
    assert outcome.state == "succeeded" and outcome.result_json == "1"


def test_cancel_calls_cancel_execution_and_is_idempotent(
    fake: FakeCloudRun, tmp_path: Path
) -> None:
    fake.plan(duration_s=60)
    provider = CloudRunProvider(config(fake))

    async def scenario() -> Any:
        handle = await provider.submit(spec(tmp_path))
        await provider.cancel(handle, 1.0)
        first = await provider.wait(handle)
        await provider.cancel(handle, 1.0)  # the fake answers FAILED_PRECONDITION now
        second = await CloudRunProvider(config(fake)).wait(handle)  # a fresh instance agrees
        await provider.close()
        return handle, first, second

    handle, first, second = run(scenario())
    assert [r.name for r in fake.calls_of("CancelExecution")] == [handle.resource_id] * 2
    for outcome in (first, second):
        assert outcome.state == "cancelled"
        assert outcome.error is not None and outcome.error.error_class == "cancelled"


def test_timeout_cancels_the_execution(fake: FakeCloudRun, tmp_path: Path) -> None:
    fake.plan(duration_s=60)
    started = time.monotonic()
    handle, outcome = run(submit_wait(CloudRunProvider(config(fake)), spec(tmp_path, timeout_s=1)))
    assert time.monotonic() - started >= 1.0  # never early
    assert outcome.state == "timed_out"
    assert outcome.error is not None and outcome.error.error_class == "timeout"
    assert "timeout of 1 s" in outcome.error.message
    assert [r.name for r in fake.calls_of("CancelExecution")] == [handle.resource_id]
    assert fake.executions[handle.resource_id].state == "cancelled"
    # Re-attached after the timeout: the cancelled execution still reads as timed out.
    assert run(CloudRunProvider(config(fake)).wait(handle)).state == "timed_out"


def test_task_timeout_enforced_by_cloud_run_is_timed_out(
    fake: FakeCloudRun, tmp_path: Path
) -> None:
    fake.plan(duration_s=60, enforce_task_timeout=True)
    provider = CloudRunProvider(config(fake))

    async def scenario() -> Any:
        handle = await provider.submit(spec(tmp_path, timeout_s=1, command=["sleep", "60"]))
        await asyncio.sleep(1.2)  # Cloud Run ends the task before our wait() looks
        return await submit_wait_existing(provider, handle)

    outcome = run(scenario())
    assert outcome.state == "timed_out" and outcome.exit_code == 137
    assert not fake.calls_of("CancelExecution")


async def submit_wait_existing(provider: Provider, handle: Handle) -> Any:
    try:
        return await provider.wait(handle)
    finally:
        await provider.close()


def test_unknown_job_is_provider_error_with_googles_message(
    fake: FakeCloudRun, tmp_path: Path
) -> None:
    provider = CloudRunProvider(config(fake))
    with pytest.raises(ProviderError, match=r"RunJob .*jobs/nope.* does not exist") as info:
        run(submit_wait(provider, spec(tmp_path, job="nope")))
    assert "404" in str(info.value)


def test_api_error_in_wait_is_infrastructure(fake: FakeCloudRun, tmp_path: Path) -> None:
    fake.plan(duration_s=60)
    provider = CloudRunProvider(config(fake))

    async def scenario() -> Any:
        handle = await provider.submit(spec(tmp_path))
        del fake.executions[handle.resource_id]  # deleted behind our back
        return handle, await submit_wait_existing(provider, handle)

    handle, outcome = run(scenario())
    assert outcome.state == "failed" and outcome.error is not None
    assert outcome.error.error_class == "infrastructure"
    assert f"Resource '{handle.resource_id}' was not found" in outcome.error.message


def test_recover_with_a_new_provider_instance(fake: FakeCloudRun, tmp_path: Path) -> None:
    fake.plan(duration_s=0.8, stdout=[marker({"state": "succeeded", "result_json": "5"})])

    async def scenario() -> Any:
        first = CloudRunProvider(config(fake))
        saved = (await first.submit(spec(tmp_path))).to_json()
        await first.close()
        fresh = CloudRunProvider(config(fake))
        handle = Handle.from_json(saved)
        alive = await fresh.recover(handle)
        gone = await fresh.recover(Handle(handle.provider, JOB + "/executions/x", handle.data))
        return alive, gone, await submit_wait_existing(fresh, handle)

    alive, gone, outcome = run(scenario())
    assert alive and not gone
    assert outcome.state == "succeeded" and outcome.result_json == "5"


def test_channel_factory_is_used(fake: FakeCloudRun, tmp_path: Path) -> None:
    fake.plan(duration_s=0.0)
    address = fake.address
    made: list[grpc.aio.Channel] = []

    def channel() -> grpc.aio.Channel:
        made.append(grpc.aio.insecure_channel(address))
        return made[-1]

    cfg = config(fake, insecure=False, endpoint=None, channel=channel)
    _, outcome = run(submit_wait(CloudRunProvider(cfg), spec(tmp_path, command=["true"])))
    assert outcome.state == "succeeded" and len(made) == 1


def test_options_and_config_are_checked(fake: FakeCloudRun, tmp_path: Path) -> None:
    provider = CloudRunProvider(config(fake))
    with pytest.raises(ProviderOptionsError, match="cannot change its job's image"):
        run(provider.submit(spec(tmp_path, image="gcr.io/p/other")))
    with pytest.raises(ProviderOptionsError, match="option 'job'"):
        CloudRunProvider(config(fake, job=None)).validate_options({})
    assert not fake.calls_of("RunJob")
    with pytest.raises(ProviderError, match="'project' is required"):
        CloudRunProvider({"region": "r"})
    with pytest.raises(ProviderError, match=r"does not accept config key.*zone"):
        CloudRunProvider({"project": "p", "region": "r", "zone": "a"})
    with pytest.raises(ProviderError, match="poll_interval_s"):
        CloudRunProvider({"project": "p", "region": "r", "poll_interval_s": "often"})
    with pytest.raises(ProviderError, match="'insecure' needs an 'endpoint'"):
        CloudRunProvider({"project": "p", "region": "r", "insecure": True})
    assert isinstance(load_provider("gcp-cloud-run", config(fake)), CloudRunProvider)


def test_production_clients_use_endpoint_and_credentials() -> None:
    from google.cloud import run_v2

    settings = CloudRunConfig.from_mapping(
        {
            "project": "p",
            "region": "r",
            "endpoint": "europe-west1-run.googleapis.com",
            "credentials": AnonymousCredentials(),
        }
    )

    async def scenario() -> list[str]:
        clients = gcp_client.make_clients(settings, run_v2)  # connects lazily
        try:
            parts = (clients.jobs, clients.executions, clients.tasks)
            return [client.transport._host for client in parts]
        finally:
            await clients.close()

    assert run(scenario()) == ["europe-west1-run.googleapis.com:443"] * 3


def test_missing_sdk_gives_install_hint(
    fake: FakeCloudRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "google.cloud.run_v2", None)
    gcp_client.load_sdk.cache_clear()
    try:
        provider = CloudRunProvider(config(fake))  # constructing needs no SDK
        with pytest.raises(ProviderError, match=r"install meridian-orchestrator\[gcp\]"):
            run(provider.submit(spec(tmp_path)))
    finally:
        gcp_client.load_sdk.cache_clear()


def test_python_step_without_log_reader_fails_before_running(
    fake: FakeCloudRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    provider = CloudRunProvider(config(fake, log_source=None))
    with pytest.raises(ProviderError, match="Cloud Logging"):
        run(provider.submit(spec(tmp_path)))
    assert not fake.calls_of("RunJob")


# ---- CloudLoggingSource against a fake of Cloud Logging's entries:list ----------------------


class _LoggingApi(BaseHTTPRequestHandler):
    requests: list[dict[str, Any]] = []
    pages: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "body": body})
        page = type(self).pages.pop(0) if type(self).pages else {}
        raw = json.dumps(page).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: Any) -> None:
        pass


def test_cloud_logging_source_reads_entries_list() -> None:
    log = "projects/proj/logs/run.googleapis.com%2F"
    _LoggingApi.requests = []
    _LoggingApi.pages = [
        {
            "entries": [
                {"logName": log + "stdout", "textPayload": "a\n", "insertId": "1",
                 "timestamp": "2024-05-01T10:00:00.123456789Z"},
                {"logName": log + "stderr", "textPayload": "b", "insertId": "2",
                 "timestamp": "2024-05-01T10:00:01Z"},
            ],
            "nextPageToken": "p2",
        },
        {"entries": [{"logName": log + "stdout", "jsonPayload": {"message": "c"},
                      "insertId": "3", "timestamp": "2024-05-01T10:00:01Z"}]},
        {"entries": [{"logName": log + "stdout", "textPayload": "c-again", "insertId": "3",
                      "timestamp": "2024-05-01T10:00:01Z"},
                     {"logName": log + "stdout", "textPayload": "d", "insertId": "4",
                      "timestamp": "2024-05-01T10:00:01Z"}]},
    ]  # fmt: skip
    server = ThreadingHTTPServer(("127.0.0.1", 0), _LoggingApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        source = CloudLoggingSource(
            AnonymousCredentials(), f"http://127.0.0.1:{server.server_port}"
        )
        execution = JOB + "/executions/meridian-steps-abcde"
        first = run(source.read(execution, None))
        second = run(source.read(execution, first[-1].cursor))
    finally:
        server.shutdown()
        server.server_close()

    assert [(e.stream, e.text) for e in first] == [
        ("stdout", "a"),
        ("stderr", "b"),
        ("stdout", "c"),
    ]
    assert first[0].at_unix_ms == 1714557600123
    assert [e.text for e in second] == ["d"]  # same timestamp, later insertId: not repeated
    body = _LoggingApi.requests[0]["body"]
    assert _LoggingApi.requests[0]["path"] == "/v2/entries:list"
    assert body["resourceNames"] == ["projects/proj"] and body["orderBy"] == "timestamp asc"
    assert 'resource.labels.job_name="meridian-steps"' in body["filter"]
    assert 'labels."run.googleapis.com/execution_name"="meridian-steps-abcde"' in body["filter"]
    assert _LoggingApi.requests[1]["body"]["pageToken"] == "p2"
    assert (
        'timestamp>="2024-05-01T10:00:01.000000000Z"' in _LoggingApi.requests[2]["body"]["filter"]
    )


def test_timestamps_keep_nanoseconds() -> None:
    ns = parse_timestamp_ns("2024-05-01T12:00:00.000000001+02:00")
    assert ns == parse_timestamp_ns("2024-05-01T10:00:00Z") + 1
    assert parse_timestamp_ns(format_timestamp_ns(ns)) == ns
