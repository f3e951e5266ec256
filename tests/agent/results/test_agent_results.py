"""Results that stay at their site, on the real Agent: a fake control plane over loopback mTLS,
the real process provider running ``meridian.stepexec``, and real stores (a directory, moto).

A step whose result reaches the inline threshold has it put into the site's store and reports
only a reference; a step on the same agent that takes the reference reads the object where it
is (filesystem) or streamed from the store (S3); a store the step names that the agent lacks,
an agent without stores and an unavailable store each fail the attempt with a clear error and
leave the agent healthy; a sealed step's result is stored sealed and opened for its consumer.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from agent import Agent, AgentConfig, enroll
from agent.results import (
    FilesystemConfig,
    ResultStoreConfigError,
    ResultStoresConfig,
    S3Config,
    StoreConfig,
    attempt_key,
    file_digest,
)
from meridian.core import sealedfile, sealing
from meridian.core.resultref import ResultRef, ref_marker
from meridian.core.sealing import KeyRing
from protos.meridian.v1 import agent_pb2, common_pb2
from providers.base import ExecutionSpec, Handle
from providers.process import ProcessProvider
from tests.agent.fakecp import JOIN_TOKEN, FakeControlPlane, Session
from tests.agent.results.conftest import BUCKET, s3_config
from tests.support.deadlines import DEADLINE_S
from tests.support.polling import apoll_until
from tests.support.tls import TestPKI

pytestmark = pytest.mark.timeout(120)

TWO_MIB = 2 * 1024 * 1024
SECRET = "iban-DE89370400440532013000"
STEPS = """
def produce(n, text="x"):
    return text * (n // len(text))

def measure(value):
    return {"length": len(value), "head": value[:24]}
"""


class RecordingProcessProvider(ProcessProvider):
    """The real process provider, remembering what it was asked to start."""

    def __init__(self) -> None:
        super().__init__()
        self.specs: dict[str, ExecutionSpec] = {}

    async def submit(self, spec: ExecutionSpec) -> Handle:
        self.specs[spec.attempt_id] = spec
        return await super().submit(spec)


def run_async(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), DEADLINE_S * 2))


def stores_config(**stores: FilesystemConfig | S3Config) -> ResultStoresConfig:
    configs = {
        name: StoreConfig(name, "filesystem" if isinstance(c, FilesystemConfig) else "s3", c)
        for name, c in stores.items()
    }
    return ResultStoresConfig(configs, next(iter(configs), None))


@asynccontextmanager
async def agent_with_cp(
    tmp_path: Path,
    provider: ProcessProvider,
    stores: ResultStoresConfig,
    keys: KeyRing | None = None,
) -> AsyncIterator[tuple[Session, Agent]]:
    cp = FakeControlPlane(TestPKI())
    await cp.start()
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(cp.pki.ca_pem)
    await asyncio.to_thread(enroll, cp.enroll_address, ca_file, JOIN_TOKEN, tmp_path / "agent")
    config = AgentConfig(
        control_plane=cp.address,
        data_dir=tmp_path / "agent",
        providers=(provider.type,),
        drain_grace_s=2.0,
        reconnect_max_backoff_s=0.3,
        seal_keys=keys or KeyRing(),
        result_stores=stores,
    )
    agent = Agent(config, provider_loader=lambda _type, _cfg: provider)
    run_task = asyncio.ensure_future(agent.run())
    try:
        session = await cp.next_session()
        session.welcome()
        yield session, agent
    finally:
        if cp.latest is not None:
            cp.latest.ack_everything()
        await agent.shutdown(grace=0.5)
        if not run_task.cancelled():
            await run_task
        await cp.stop()


def assign(
    session: Session,
    attempt_id: str,
    function: str,
    inputs: dict[str, Any] | str,
    step_dir: Path,
    *,
    result_store: str = "",
    input_refs: tuple[str, ...] = (),
    step_key: str = "",
    inline_threshold: int = 0,
) -> None:
    spec = common_pb2.StepSpec(
        name=function,
        module="site_steps",
        function=function,
        provider="process",
        options_json=json.dumps({"env": {"PYTHONPATH": str(step_dir)}}),
        result_store=result_store,
        inline_threshold_bytes=inline_threshold,
    )
    inputs_json = inputs if isinstance(inputs, str) else json.dumps(inputs)
    assignment = agent_pb2.Assign(
        attempt_id=attempt_id,
        fencing_token=1,
        flow_run_id="run-1",
        step_run_id=f"sr-{attempt_id}",
        step_key=step_key or f"{function}#1",
        attempt_number=1,
        spec=spec,
        inputs_json=inputs_json,
        input_refs_json=list(input_refs),
    )
    session.send(assign=agent_pb2.AssignBatch(assignments=[assignment]))


async def finish(session: Session, attempt_id: str) -> Any:
    """Accept the attempt's RUNNING proposal; its finished report."""
    while True:
        report = await session.next_report()
        if report.attempt_id == attempt_id and report.WhichOneof("body") == "running":
            break
    session.decide(attempt_id, 1)
    reports = await session.reports_until_finished(attempt_id)
    return reports[-1].finished


def succeeded_ref(finished: Any) -> ResultRef:
    assert finished.outcome == agent_pb2.ATTEMPT_OUTCOME_SUCCEEDED, finished
    assert finished.result_json == ""
    return ResultRef.from_json(finished.result_ref_json)


def expected_digest(n: int, text: str = "x") -> str:
    return hashlib.sha256(json.dumps(text * (n // len(text))).encode()).hexdigest()


@pytest.fixture
def step_dir(tmp_path: Path) -> Path:
    step_dir = tmp_path / "steps"
    step_dir.mkdir()
    (step_dir / "site_steps.py").write_text(STEPS)
    return step_dir


def test_a_large_result_stays_in_the_store_and_its_consumer_reads_it_in_place(
    tmp_path: Path, step_dir: Path
) -> None:
    provider = RecordingProcessProvider()
    root = tmp_path / "results"
    stores = stores_config(scratch=FilesystemConfig(root))

    async def scenario() -> None:
        async with agent_with_cp(tmp_path, provider, stores) as (s, _):
            assert list(s.hello.result_stores) == ["scratch"]
            assert s.hello.default_result_store == "scratch"
            assign(s, "p-1", "produce", {"args": [TWO_MIB], "kwargs": {}}, step_dir)
            ref = succeeded_ref(await finish(s, "p-1"))
            assert (ref.environment, ref.store, ref.serializer, ref.sealed) == (
                "test-env",
                "scratch",
                "json",
                False,
            )
            obj = root / attempt_key("run-1", "produce#1", "p-1")
            assert ref.uri == obj.as_uri()
            assert (ref.size, ref.sha256) == (obj.stat().st_size, file_digest(obj))
            assert ref.sha256 == expected_digest(TWO_MIB)
            work = tmp_path / "agent" / "work" / "p-1"
            # The result file goes once the report is journaled.
            await apoll_until(lambda: not (work / "result.bin").exists(), message="result.bin")

            inputs = {"args": [ref_marker(ref)], "kwargs": {}}
            assign(s, "c-1", "measure", inputs, step_dir, input_refs=(ref.to_json(),))
            consumed = await finish(s, "c-1")
            assert consumed.outcome == agent_pb2.ATTEMPT_OUTCOME_SUCCEEDED, consumed
            assert json.loads(consumed.result_json) == {"length": TWO_MIB, "head": "x" * 24}
            # Read where it is: the step got the store's own file, no copy was made.
            (given,) = provider.specs["c-1"].input_files.values()
            assert Path(given.path) == obj.resolve()
            # Nothing stays behind in its work dir (cleared once its report is journaled).
            c_inputs = tmp_path / "agent" / "work" / "c-1" / "inputs"
            await apoll_until(lambda: not c_inputs.exists(), message="c-1/inputs removed")

    run_async(scenario)


def test_an_s3_store_keeps_the_result_and_the_consumer_streams_it(
    tmp_path: Path, step_dir: Path, s3_endpoint: str
) -> None:
    provider = RecordingProcessProvider()
    prefix = f"t-{os.urandom(4).hex()}/"
    stores = stores_config(s3=s3_config(s3_endpoint, prefix))

    async def scenario() -> None:
        async with agent_with_cp(tmp_path, provider, stores) as (s, _):
            args = {"args": [TWO_MIB, "abc"], "kwargs": {}}
            assign(s, "p-1", "produce", args, step_dir, result_store="s3")
            ref = succeeded_ref(await finish(s, "p-1"))
            key = attempt_key("run-1", "produce#1", "p-1")
            assert ref.uri == f"s3://{BUCKET}/{prefix}{key}"
            assert ref.sha256 == expected_digest(TWO_MIB, "abc")

            inputs = {"args": [ref_marker(ref)], "kwargs": {}}
            assign(s, "c-1", "measure", inputs, step_dir, input_refs=(ref.to_json(),))
            consumed = await finish(s, "c-1")
            length = TWO_MIB // 3 * 3
            assert json.loads(consumed.result_json) == {"length": length, "head": "abc" * 8}
            (given,) = provider.specs["c-1"].input_files.values()
            copy = tmp_path / "agent" / "work" / "c-1" / "inputs" / ref.sha256
            assert Path(given.path) == copy.resolve()
            # The copy goes with the attempt.
            await apoll_until(lambda: not copy.exists(), message="the input copy deleted")

    run_async(scenario)
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]
    assert [o["Key"] for o in listed] == [f"{prefix}{attempt_key('run-1', 'produce#1', 'p-1')}"]


def test_a_store_the_agent_lacks_fails_the_step_permanently_before_it_starts(
    tmp_path: Path, step_dir: Path
) -> None:
    provider = RecordingProcessProvider()
    stores = stores_config(scratch=FilesystemConfig(tmp_path / "results"))

    async def scenario() -> None:
        async with agent_with_cp(tmp_path, provider, stores) as (s, _):
            args = {"args": [10], "kwargs": {}}
            assign(s, "p-1", "produce", args, step_dir, result_store="archive")
            failed = await finish(s, "p-1")
            assert failed.outcome == agent_pb2.ATTEMPT_OUTCOME_FAILED
            assert failed.error.error_class == "permanent"
            assert "result store 'archive'" in failed.error.message
            assert "its stores: scratch" in failed.error.message
            assert "p-1" not in provider.specs  # nothing was started
            assert (await s.next_heartbeat()).degraded == ""

    run_async(scenario)


def test_without_a_store_or_with_one_unavailable_the_attempt_fails_and_the_agent_stays_healthy(
    tmp_path: Path, step_dir: Path, s3_endpoint: str
) -> None:
    provider = RecordingProcessProvider()
    missing_bucket = s3_config(s3_endpoint, "p/", bucket="no-such-bucket")
    stores = stores_config(gone=missing_bucket)

    async def scenario() -> None:
        async with agent_with_cp(tmp_path, provider, stores) as (s, _):
            assign(s, "p-1", "produce", {"args": [TWO_MIB], "kwargs": {}}, step_dir)
            failed = await finish(s, "p-1")
            assert failed.outcome == agent_pb2.ATTEMPT_OUTCOME_FAILED
            assert failed.error.error_class == "infrastructure"
            assert failed.error.type == "meridian.ResultStoreUnavailable"
            assert "store 'gone'" in failed.error.message
            assert "NoSuchBucket" in failed.error.message
            # A small result still travels inline.
            assign(s, "p-2", "produce", {"args": [10], "kwargs": {}}, step_dir)
            small = await finish(s, "p-2")
            assert json.loads(small.result_json) == "x" * 10
            assert (await s.next_heartbeat()).degraded == ""

    run_async(scenario)

    async def no_stores() -> None:
        async with agent_with_cp(tmp_path / "b", provider, ResultStoresConfig({}, None)) as (
            s,
            _,
        ):
            assert list(s.hello.result_stores) == [] and s.hello.default_result_store == ""
            assign(s, "p-3", "produce", {"args": [TWO_MIB], "kwargs": {}}, step_dir)
            failed = await finish(s, "p-3")
            assert failed.error.error_class == "permanent"
            assert failed.error.type == "meridian.NoResultStore"
            message = failed.error.message
            assert f"step's result is {TWO_MIB + 2} bytes" in message
            assert "[result_stores.NAME]" in message and "return a reference" in message

    (tmp_path / "b").mkdir()
    run_async(no_stores)


def test_a_result_under_the_steps_threshold_but_over_the_inline_limit_is_stored(
    tmp_path: Path, step_dir: Path
) -> None:
    # @step(inline_threshold=4 MiB) allows a result the agent may not send inline (3 MiB).
    threshold, n = 4 * 1024 * 1024, 4 * 1024 * 1024 - 3  # its JSON: 4,194,303 bytes
    provider = RecordingProcessProvider()
    stores = stores_config(scratch=FilesystemConfig(tmp_path / "results"))

    async def with_store() -> None:
        async with agent_with_cp(tmp_path, provider, stores) as (s, _):
            assign(s, "p-1", "produce", {"args": [n], "kwargs": {}}, step_dir,
                   inline_threshold=threshold)  # fmt: skip
            ref = succeeded_ref(await finish(s, "p-1"))
            assert (ref.store, ref.size) == ("scratch", n + 2)
            assert ref.sha256 == expected_digest(n)
            # One that fits (over the default threshold) travels inline as the step asked;
            # the fake control plane's 1 MiB frame caps the inline limit here.
            small = 512 * 1024
            assign(s, "p-2", "produce", {"args": [small], "kwargs": {}}, step_dir,
                   inline_threshold=threshold)  # fmt: skip
            assert json.loads((await finish(s, "p-2")).result_json) == "x" * small

    run_async(with_store)

    async def without_store() -> None:
        async with agent_with_cp(tmp_path / "b", provider, ResultStoresConfig({}, None)) as (
            s,
            _,
        ):
            assign(s, "p-3", "produce", {"args": [n], "kwargs": {}}, step_dir,
                   inline_threshold=threshold)  # fmt: skip
            failed = await finish(s, "p-3")
            assert failed.error.error_class == "permanent"
            assert failed.error.type == "meridian.ResultTooLarge"
            assert f"step's result is {n + 2} bytes" in failed.error.message
            assert "@step(result_store=...)" in failed.error.message

    (tmp_path / "b").mkdir()
    run_async(without_store)


def test_a_sealed_steps_result_is_stored_sealed_and_opened_for_its_consumer(
    tmp_path: Path, step_dir: Path
) -> None:
    provider = RecordingProcessProvider()
    keys = KeyRing({"eu-sites": os.urandom(64)})
    root = tmp_path / "results"
    stores = stores_config(scratch=FilesystemConfig(root))

    async def scenario() -> None:
        async with agent_with_cp(tmp_path, provider, stores, keys) as (s, _):
            plain = json.dumps({"args": [TWO_MIB, SECRET], "kwargs": {}})
            sealed = sealing.seal_inputs(keys, "eu-sites", plain, "run-1", "produce#1")
            assign(s, "p-1", "produce", sealed, step_dir)
            ref = succeeded_ref(await finish(s, "p-1"))
            assert ref.sealed
            obj = root / attempt_key("run-1", "produce#1", "p-1")
            stored = obj.read_bytes()
            assert SECRET.encode() not in stored
            assert (ref.size, ref.sha256) == (len(stored), hashlib.sha256(stored).hexdigest())
            opened = sealedfile.open_file(keys, obj, tmp_path / "opened", "run-1", "produce#1")
            length = TWO_MIB // len(SECRET) * len(SECRET)
            assert opened.plaintext_sha256 == expected_digest(TWO_MIB, SECRET)
            work = tmp_path / "agent" / "work" / "p-1"
            await apoll_until(
                lambda: (
                    not (work / "result.bin").exists() and not (work / "result.sealed").exists()
                ),
                message="the result file and its sealed copy deleted",
            )

            marker = json.dumps({"args": [ref_marker(ref)], "kwargs": {}})
            sealed_in = sealing.seal_inputs(keys, "eu-sites", marker, "run-1", "measure#1")
            assign(s, "c-1", "measure", sealed_in, step_dir, input_refs=(ref.to_json(),))
            consumed = await finish(s, "c-1")
            assert consumed.outcome == agent_pb2.ATTEMPT_OUTCOME_SUCCEEDED, consumed
            result = sealing.open_text(
                keys, consumed.result_json, sealing.RESULT, "run-1", "measure#1", "eu-sites"
            )
            assert json.loads(result) == {"length": length, "head": SECRET[:24]}

    run_async(scenario)


def test_a_store_that_cannot_be_opened_stops_the_agent_naming_its_table(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    stores = stores_config(scratch=FilesystemConfig(blocker / "results"))

    async def scenario() -> None:
        cp = FakeControlPlane(TestPKI())
        await cp.start()
        try:
            ca_file = tmp_path / "ca.pem"
            ca_file.write_bytes(cp.pki.ca_pem)
            data_dir = tmp_path / "agent"
            await asyncio.to_thread(enroll, cp.enroll_address, ca_file, JOIN_TOKEN, data_dir)
            config = AgentConfig(control_plane=cp.address, data_dir=data_dir, result_stores=stores)
            agent = Agent(config, provider_loader=lambda _t, _c: ProcessProvider())
            with pytest.raises(ResultStoreConfigError, match=r"\[result_stores.scratch\]: cannot"):
                await agent.run()
            assert cp.sessions.empty()  # it never connected
        finally:
            await cp.stop()

    run_async(scenario)
