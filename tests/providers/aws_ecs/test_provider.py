"""The ``aws-ecs`` provider against moto 5.2.5 in server mode, with real boto3 (``emulator``).

What is real here: every AWS call the provider makes goes over HTTP through boto3 to
``moto.server.ThreadedMotoServer`` (ECS, EC2 for the awsvpc subnet/security group, CloudWatch
Logs), so request shapes, parameter validation by botocore, AWS error codes/messages from moto,
task ARNs, tags, overrides, StopTask and log paging are exercised for real.

What moto cannot do: it runs no containers. Tasks advance one state per ``DescribeTasks``
(RUNNING -> DEACTIVATING -> STOPPING -> DEPROVISIONING -> STOPPED), containers report exit code
0, moto writes no logs, ignores ``clientToken`` (so idempotency is only checked as a request
parameter) and the EC2 launch type needs registered container instances (so only FARGATE runs).
Hence two kinds of tests:

* API tests (``TestEcsApi``) use moto alone. They seed the awslogs stream
  (``prefix/container/task-id``) with what ``meridian-step`` would print, and change what moto
  reports for exit codes, ``stopCode`` and reasons through its in-process backend (reachable
  because the threaded server runs in this process) or through
  ``/moto-api/state-manager/set-transition`` (to freeze task states).
* The conformance suite (``TestEcsConformance``) runs with ``LocalContainerRuntime``
  (tests/providers/moto_fixture.py), a stand-in for the container runtime that runs each task's
  overridden command and environment as a local subprocess and ships its output to CloudWatch
  Logs in moto. So the Python step really runs through ``meridian-step --spec-env``, and its
  result travels back the way it would on AWS: the awslogs stream and the task's exit code.
  One deliberate deviation: awslogs merges stdout and stderr into one stream, so the log check
  asserts order within the merged stream instead of separate streams.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("boto3", reason="install meridian-orchestrator[aws] to test aws-ecs")
pytest.importorskip("moto.server", reason="pip install 'moto[server]==5.2.5' to test aws-ecs")

from providers.aws_ecs import EcsConfig, EcsProvider
from providers.base import (
    ExecutionSpec,
    Handle,
    LogRecord,
    Outcome,
    Provider,
    ProviderError,
    ProviderOptionsError,
)
from providers.registry import load_provider
from providers.testing import ProviderConformance, Session
from tests.providers.moto_fixture import (
    CLUSTER,
    CONTAINER,
    LOG_GROUP,
    LOG_PREFIX,
    LocalContainerRuntime,
    MotoEcs,
    moto_ecs,
)

pytestmark = [pytest.mark.emulator, pytest.mark.timeout(60)]

MARKER = "::meridian-outcome::"


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoEcs]:
    with moto_ecs() as env:
        yield env


@pytest.fixture(autouse=True)
def _default_progression(moto: MotoEcs) -> Iterator[None]:
    yield
    moto.set_transition(None)  # back to moto's default: one state per describe_tasks


def make_spec(tmp_path: Path, **changes: Any) -> ExecutionSpec:
    attempt_id = uuid.uuid4().hex
    spec = ExecutionSpec(
        attempt_id=attempt_id,
        flow_run_id="run-1",
        step_run_id="steprun-1",
        step_key="add#1",
        step_name="add",
        attempt_number=1,
        module="steps",
        function="add",
        inputs_json=json.dumps({"args": [2, 3], "kwargs": {}}),
        bundle_dir=None,
        work_dir=tmp_path / attempt_id,
    )
    return dataclasses.replace(spec, **changes)


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


def success_marker(value: Any) -> str:
    return MARKER + json.dumps({"state": "succeeded", "result_json": json.dumps(value)})


async def collect(records: AsyncIterator[LogRecord]) -> list[LogRecord]:
    return [record async for record in records]


class TestEcsApi:
    """The API calls, state mapping, logs, cancel, timeout and errors against moto alone."""

    @pytest.fixture
    def provider(self, moto: MotoEcs) -> EcsProvider:
        return EcsProvider(moto.provider_config())

    def describe(self, moto: MotoEcs, handle: Handle) -> dict[str, Any]:
        tasks = moto.client("ecs").describe_tasks(
            cluster=CLUSTER, tasks=[handle.resource_id], include=["TAGS"]
        )["tasks"]
        assert len(tasks) == 1
        return dict(tasks[0])

    def test_run_task_arguments_and_overrides(
        self, moto: MotoEcs, provider: EcsProvider, tmp_path: Path
    ) -> None:
        moto.freeze()
        sent: list[dict[str, Any]] = []
        spec = make_spec(
            tmp_path,
            options={"env": {"GREETING": "hi"}, "cpu": 512, "memory": 1024},
            env={"EXTRA": "1"},
        )

        async def scenario() -> Handle:
            client = await provider._client("ecs")
            client.meta.events.register(
                "provide-client-params.ecs.RunTask", lambda params, **_: sent.append(params)
            )
            handle = await provider.submit(spec)
            await provider.close()
            return handle

        handle = run(scenario())
        assert Handle.from_json(handle.to_json()) == handle
        assert handle.resource_id.startswith("arn:aws:ecs:us-east-1:")
        task = self.describe(moto, handle)
        assert task["taskArn"] == handle.resource_id
        assert task["launchType"] == "FARGATE"
        assert task["taskDefinitionArn"] == moto.task_definition_arn
        assert task["startedBy"] == f"meridian-{spec.attempt_id}"[:36]
        tags = {t["key"]: t["value"] for t in task["tags"]}
        assert tags == {
            "meridian:flow-run-id": "run-1",
            "meridian:step-run-id": "steprun-1",
            "meridian:step-key": "add_1",  # '#' is not allowed in ECS tag values
            "meridian:attempt-id": spec.attempt_id,
        }
        subnet = {d["name"]: d["value"] for d in task["attachments"][0]["details"]}["subnetId"]
        assert subnet == moto.subnet
        overrides = task["overrides"]
        assert (overrides["cpu"], overrides["memory"]) == ("512", "1024")
        (ours,) = overrides["containerOverrides"]
        assert ours["name"] == CONTAINER and ours["memory"] == 1024
        assert ours["command"] == ["meridian-step", "--spec-env", "MERIDIAN_STEP_SPEC"]
        env = {e["name"]: e["value"] for e in ours["environment"]}
        assert env["GREETING"] == "hi" and env["EXTRA"] == "1"
        assert env["MERIDIAN_ATTEMPT_ID"] == spec.attempt_id
        assert env["MERIDIAN_FLOW_RUN_ID"] == "run-1"
        assert env["MERIDIAN_STEP_KEY"] == "add#1"
        assert json.loads(env["MERIDIAN_STEP_SPEC"]) == {
            "module": "steps",
            "function": "add",
            "inputs_json": spec.inputs_json,
            "bundle_dir": "/app",
            "step_key": "add#1",
        }
        # moto ignores clientToken: check that the request carried it.
        assert sent[0]["clientToken"] == spec.attempt_id
        vpc = sent[0]["networkConfiguration"]["awsvpcConfiguration"]
        assert vpc == {
            "subnets": [moto.subnet],
            "securityGroups": [moto.security_group],
            "assignPublicIp": "DISABLED",
        }
        task_id = handle.resource_id.rsplit("/", 1)[-1]
        assert handle.data["log_group"] == LOG_GROUP  # found in the task definition
        assert handle.data["log_stream"] == f"{LOG_PREFIX}/{CONTAINER}/{task_id}"

    def test_plain_command_progresses_to_stopped(
        self, moto: MotoEcs, provider: EcsProvider, tmp_path: Path
    ) -> None:
        spec = make_spec(tmp_path, options={"command": ["echo", "hello"]})

        async def scenario() -> tuple[list[Outcome | None], dict[str, Any]]:
            handle = await provider.submit(spec)
            seen = [await provider.poll(handle) for _ in range(4)]
            return seen, self.describe(moto, handle)

        seen, task = run(scenario())
        # moto: DEACTIVATING, STOPPING, DEPROVISIONING, then STOPPED with exit code 0
        assert seen[:3] == [None, None, None]
        assert seen[3] == Outcome(state="succeeded", exit_code=0, result_json="null")
        assert task["lastStatus"] == "STOPPED"
        command = task["overrides"]["containerOverrides"][0]["command"]
        assert command == ["echo", "hello"]

    def test_result_and_logs_come_from_cloudwatch(
        self, moto: MotoEcs, provider: EcsProvider, tmp_path: Path
    ) -> None:
        lines = ["computing", "still computing", success_marker({"sum": 5})]

        async def scenario() -> tuple[Outcome, list[LogRecord]]:
            handle = await provider.submit(make_spec(tmp_path))
            moto.seed_logs(handle.resource_id, lines)
            logs = asyncio.create_task(collect(provider.logs(handle)))
            return await provider.wait(handle), await logs

        outcome, records = run(scenario())
        assert outcome.state == "succeeded" and outcome.exit_code == 0
        assert json.loads(outcome.result_json or "") == {"sum": 5}
        assert [r.text for r in records] == lines
        assert all(r.stream == "stdout" and r.at_unix_ms > 0 for r in records)

    def test_marker_split_by_docker_is_reassembled(
        self, moto: MotoEcs, provider: EcsProvider, tmp_path: Path
    ) -> None:
        marker = success_marker("x" * 40_000)
        pieces = [marker[i : i + 16384] for i in range(0, len(marker), 16384)]

        async def scenario() -> Outcome:
            handle = await provider.submit(make_spec(tmp_path))
            moto.seed_logs(handle.resource_id, ["before", *pieces])
            return await provider.wait(handle)

        outcome = run(scenario())
        assert outcome.state == "succeeded"
        assert json.loads(outcome.result_json or "") == "x" * 40_000

    def test_step_failure_keeps_its_class_and_exit_code(
        self, moto: MotoEcs, provider: EcsProvider, tmp_path: Path
    ) -> None:
        moto.freeze()
        error = {"error_class": "permanent", "type": "steps.Bad", "message": "bad input"}

        async def scenario() -> Outcome:
            handle = await provider.submit(make_spec(tmp_path))
            moto.seed_logs(
                handle.resource_id, [MARKER + json.dumps({"state": "failed", "error": error})]
            )
            task = moto.task(handle.resource_id)
            task.containers[0].exitCode = 1
            task.stop_code, task.stopped_reason = "EssentialContainerExited", "exited"
            task.last_status = "STOPPED"
            return await provider.wait(handle)

        outcome = run(scenario())
        assert outcome.state == "failed" and outcome.exit_code == 1
        assert outcome.error is not None
        assert (outcome.error.error_class, outcome.error.type) == ("permanent", "steps.Bad")

    @pytest.mark.parametrize("python_step", [False, True], ids=["command", "python"])
    def test_nonzero_exit_without_marker_is_transient(
        self, moto: MotoEcs, provider: EcsProvider, tmp_path: Path, python_step: bool
    ) -> None:
        moto.freeze()
        options = {} if python_step else {"command": ["false"]}

        async def scenario() -> Outcome:
            handle = await provider.submit(make_spec(tmp_path, options=options))
            task = moto.task(handle.resource_id)
            task.containers[0].exitCode = 137
            task.containers[0].reason = "OutOfMemoryError: Container killed due to memory usage"
            task.stop_code = "EssentialContainerExited"
            task.stopped_reason = "Essential container in task exited"
            task.last_status = "STOPPED"
            return await provider.wait(handle)

        outcome = run(scenario())
        assert outcome.state == "failed" and outcome.exit_code == 137
        assert outcome.error is not None and outcome.error.error_class == "transient"
        assert "exited with code 137" in outcome.error.message
        assert "OutOfMemoryError" in outcome.error.message
        assert "EssentialContainerExited" in outcome.error.message

    def test_python_step_exit_zero_without_marker_is_infrastructure(
        self, moto: MotoEcs, provider: EcsProvider, tmp_path: Path
    ) -> None:
        async def scenario() -> Outcome:
            return await provider.wait(await provider.submit(make_spec(tmp_path)))

        outcome = run(scenario())
        assert outcome.state == "failed" and outcome.exit_code == 0
        assert outcome.error is not None and outcome.error.error_class == "infrastructure"
        assert LOG_GROUP in outcome.error.message

    def test_failed_to_start_is_infrastructure(
        self, moto: MotoEcs, provider: EcsProvider, tmp_path: Path
    ) -> None:
        moto.freeze()

        async def scenario() -> Outcome:
            handle = await provider.submit(make_spec(tmp_path))
            task = moto.task(handle.resource_id)
            task.containers[0].exitCode = None
            task.containers[0].reason = "CannotPullContainerError: pull access denied"
            task.stop_code = "TaskFailedToStart"
            task.stopped_reason = "Task failed to start"
            task.last_status = "STOPPED"
            return await provider.wait(handle)

        outcome = run(scenario())
        assert outcome.state == "failed" and outcome.exit_code is None
        assert outcome.error is not None and outcome.error.error_class == "infrastructure"
        assert "TaskFailedToStart" in outcome.error.message
        assert "CannotPullContainerError" in outcome.error.message

    def test_cancel_is_stop_task_and_idempotent(
        self, moto: MotoEcs, provider: EcsProvider, tmp_path: Path
    ) -> None:
        moto.freeze()

        async def scenario() -> tuple[Handle, Outcome, Outcome]:
            handle = await provider.submit(make_spec(tmp_path))
            assert await provider.poll(handle) is None
            await provider.cancel(handle, 1.0)
            first = await provider.wait(handle)
            await provider.cancel(handle, 1.0)
            return handle, first, await provider.wait(handle)

        handle, first, second = run(scenario())
        assert first.state == second.state == "cancelled"
        assert first.error is not None and first.error.error_class == "cancelled"
        task = self.describe(moto, handle)
        assert task["lastStatus"] == task["desiredStatus"] == "STOPPED"
        assert task["stoppedReason"] == "meridian: cancelled by the Meridian agent"

    def test_timeout_stops_the_task(
        self, moto: MotoEcs, provider: EcsProvider, tmp_path: Path
    ) -> None:
        moto.freeze()

        async def scenario() -> tuple[Handle, Outcome, float]:
            started = time.monotonic()
            handle = await provider.submit(make_spec(tmp_path, timeout_s=0.5))
            outcome = await provider.wait(handle)
            return handle, outcome, time.monotonic() - started

        handle, outcome, elapsed = run(scenario())
        assert outcome.state == "timed_out"
        assert outcome.error is not None and outcome.error.error_class == "timeout"
        assert "0.5 s" in outcome.error.message
        assert elapsed >= 0.5  # never early; how late depends on load
        task = self.describe(moto, handle)
        assert task["lastStatus"] == "STOPPED"
        assert task["stoppedReason"].startswith("meridian: timed out after 0.5 s")

    def test_recover_with_a_new_provider(
        self, moto: MotoEcs, provider: EcsProvider, tmp_path: Path
    ) -> None:
        moto.freeze()

        async def scenario() -> tuple[bool, bool, Outcome]:
            saved = (await provider.submit(make_spec(tmp_path, timeout_s=0.3))).to_json()
            await provider.close()
            fresh = load_provider("aws-ecs", moto.provider_config())
            handle = Handle.from_json(saved)
            found = await fresh.recover(handle)
            gone_arn = handle.resource_id.rsplit("/", 1)[0] + "/" + uuid.uuid4().hex
            gone = await fresh.recover(dataclasses.replace(handle, resource_id=gone_arn))
            # The timeout travels in the handle: the new instance enforces it too.
            return found, gone, await fresh.wait(handle)

        found, gone, outcome = run(scenario())
        assert found and not gone
        assert outcome.state == "timed_out"

    def test_unknown_cluster_reports_aws_message(self, moto: MotoEcs, tmp_path: Path) -> None:
        provider = EcsProvider(moto.provider_config(cluster="no-such-cluster"))
        with pytest.raises(ProviderError, match=r"ClusterNotFoundException: Cluster not found\."):
            run(provider.submit(make_spec(tmp_path, options={"command": ["true"]})))
        handle = Handle(
            provider="aws-ecs",
            resource_id="arn:aws:ecs:us-east-1:123456789012:task/no-such-cluster/abc",
            data={
                "cluster": "no-such-cluster",
                "container": CONTAINER,
                "python_step": False,
                "timeout_s": None,
                "started_at_ms": 0,
            },
        )
        outcome = run(provider.wait(handle))
        assert outcome.state == "failed"
        assert outcome.error is not None and outcome.error.error_class == "infrastructure"
        assert "Cluster not found." in outcome.error.message

    def test_python_step_needs_awslogs(
        self, moto: MotoEcs, provider: EcsProvider, tmp_path: Path
    ) -> None:
        ecs = moto.client("ecs")
        ecs.register_task_definition(
            family="no-logs",
            networkMode="awsvpc",
            requiresCompatibilities=["FARGATE"],
            cpu="256",
            memory="512",
            containerDefinitions=[{"name": "main", "image": "busybox", "memory": 512}],
        )
        with pytest.raises(ProviderError, match="awslogs"):
            run(provider.submit(make_spec(tmp_path, options={"task_definition": "no-logs"})))
        spec = make_spec(tmp_path, options={"task_definition": "no-logs", "command": ["true"]})
        handle = run(provider.submit(spec))
        assert handle.data["container"] == "main" and handle.data["log_stream"] is None

    def test_oversized_overrides_rejected(self, provider: EcsProvider, tmp_path: Path) -> None:
        spec = make_spec(tmp_path, inputs_json=json.dumps({"args": ["x" * 9000], "kwargs": {}}))
        with pytest.raises(ProviderError, match="RunTask accepts 8192"):
            run(provider.submit(spec))

    @pytest.mark.parametrize(
        "options",
        [
            {"command": "echo hi"},
            {"command": []},
            {"command": ["ok", 3]},
            {"env": {"A": 1}},
            {"env": {"MERIDIAN_ATTEMPT_ID": "spoof"}},
            {"env": ["A=1"]},
            {"cpu": 0},
            {"cpu": "256"},
            {"memory": True},
            {"gpu": 1},  # Fargate has no GPUs
            {"code_dir": "relative/dir"},
            {"task_definition": ""},
            {"image": "python:3.11"},  # RunTask cannot override the image
        ],
    )
    def test_invalid_options_rejected(self, provider: EcsProvider, options: Any) -> None:
        with pytest.raises(ProviderOptionsError):
            provider.validate_options(options)

    def test_valid_options_accepted(self, provider: EcsProvider) -> None:
        provider.validate_options(
            {
                "command": ["python", "-V"],
                "env": {"A": "1"},
                "cpu": 1024,
                "memory": 2048,
                "code_dir": "/srv/code",
                "task_definition": "other:3",
            }
        )

    @pytest.mark.parametrize(
        ("config", "match"),
        [
            ({"task_definition": "x", "subnets": ["s"]}, "cluster"),
            ({"cluster": "c", "task_definition": "x"}, "subnets"),
            ({"cluster": "c", "task_definition": "x", "launch_type": "LAMBDA"}, "launch_type"),
            ({"cluster": "c", "task_definition": "x", "launch_type": "EC2", "zone": 1}, "zone"),
            (
                {
                    "cluster": "c",
                    "task_definition": "x",
                    "launch_type": "EC2",
                    "access_key_id": "AKIA",
                },
                "secret_access_key",
            ),
        ],
    )
    def test_invalid_config_rejected(self, config: dict[str, Any], match: str) -> None:
        with pytest.raises(ProviderError, match=match):
            EcsProvider(config)

    def test_config_defaults(self) -> None:
        config = EcsConfig.from_mapping(
            {"cluster": "c", "task_definition": "t", "launch_type": "EC2"}
        )
        assert config.access_key_id is None and config.endpoint_url is None  # SDK defaults
        assert config.verify is True and config.code_dir == "/app"

    def test_missing_boto3_says_which_extra(
        self, monkeypatch: pytest.MonkeyPatch, moto: MotoEcs, tmp_path: Path
    ) -> None:
        monkeypatch.setitem(sys.modules, "boto3", None)
        provider = EcsProvider(moto.provider_config())
        with pytest.raises(ProviderError, match=r"meridian-orchestrator\[aws\]"):
            run(provider.submit(make_spec(tmp_path)))


class TestEcsConformance(ProviderConformance):
    """The conformance suite, with LocalContainerRuntime running the tasks moto records."""

    shares_filesystem = True  # the stand-in runtime runs on this machine
    returns_result_files = False  # the outcome comes back in the task's logs
    invalid_options = ({"command": "not-a-list"}, {"cpu": -1}, {"env": {"A": 1}})
    valid_options = ({}, {"command": ["true"], "memory": 1024})

    @pytest.fixture
    def provider(self, moto: MotoEcs) -> Iterator[Provider]:
        self.moto = moto
        with LocalContainerRuntime(moto):
            yield EcsProvider(moto.provider_config())

    def make_spec(self, bundle: Path, function: str, *args: Any, **kwargs: Any) -> ExecutionSpec:
        spec = super().make_spec(bundle, function, *args, **kwargs)
        # The "image" bakes the code in at code_dir; here that is the suite's bundle dir.
        return dataclasses.replace(spec, options={"code_dir": str(bundle), **spec.options})

    async def assert_stopped(self, provider: Provider, handle: Handle) -> None:
        ecs = self.moto.client("ecs")
        (task,) = ecs.describe_tasks(cluster=CLUSTER, tasks=[handle.resource_id])["tasks"]
        assert task["lastStatus"] == "STOPPED"

    def test_logs_arrive_in_order(self, provider: Provider, bundle: Path) -> None:
        # awslogs merges stdout and stderr into one stream: check order within it.
        spec = self.make_spec(bundle, "chatter", [5])

        async def scenario(session: Session) -> tuple[Outcome, list[LogRecord]]:
            handle = await session.submit(provider, spec)
            logs = asyncio.create_task(collect(provider.logs(handle)))
            outcome = await provider.wait(handle)
            return outcome, await logs

        outcome, records = self.run(provider, scenario)
        assert outcome.state == "succeeded" and outcome.result_json == "5"
        texts = [r.text for r in records if "conformance-" in r.text]
        assert [t for t in texts if "-out" in t] == [f"conformance-out {i}" for i in range(5)]
        assert [t for t in texts if "-err" in t] == [f"conformance-err {i}" for i in range(5)]
        assert any(r.text.startswith(MARKER) for r in records)
        assert all(r.at_unix_ms > 0 for r in records)
