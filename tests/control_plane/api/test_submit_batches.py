"""Fan-out submission and batched watching over real gRPC with TLS, on SQLite and PostgreSQL.

A ``map`` travels as one ``StepBatch`` per request (the spec once, keys and inputs per call);
the control plane checks every call before storing any, stores the step runs, their attempts
and their events in bulk, and answers a retried request from what it stored. ``WatchRun``
with ``batched`` packs many updates into each message.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import func, select

from control_plane import ServerConfig, create_api_token
from control_plane.api.validation import MAX_CALLS_PER_REQUEST, MAX_INPUTS_BYTES
from control_plane.store.db import Store
from control_plane.store.models import AttemptRow, EventRow, StepRunRow
from meridian import step
from meridian.client import ControlClient
from meridian.core.bundle import pack_directory
from meridian.core.convert import spec_to_proto
from meridian.core.errors import ValidationError
from meridian.models import StepSpec
from meridian.sdk.context import FlowContext, activate
from protos.meridian.v1 import control_pb2, control_pb2_grpc
from tests.support.databases import POSTGRES_ENV
from tests.support.databases import postgres_database as _postgres_database
from tests.support.plane import ThreadedControlPlane


@step(target="bench=parked")
def parked(i: int) -> int:
    """Targets a label no agent has: its steps stay queued."""
    return i


@dataclass
class Estate:
    config: ServerConfig
    address: str
    ca_file: Path
    bundle_sha256: str
    operator_token: str

    def client(self) -> ControlClient:
        return ControlClient(self.address, self.ca_file, token=self.operator_token)

    def count(self, run_id: str, model: Any, *where: Any) -> int:
        store = Store(self.config.database_url)
        try:
            query = select(func.count()).select_from(model).where(model.flow_run_id == run_id)
            return int(store.run_sync(lambda s: s.scalar(query.where(*where))))
        finally:
            store.close()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def estate(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Estate]:
    databases: Iterator[str | None] = iter([None])
    if request.param == "postgres":
        base = os.environ.get(POSTGRES_ENV)
        if not base:
            pytest.skip(f"set {POSTGRES_ENV} to run these tests against PostgreSQL too")
        databases = _postgres_database(base)
    db_url = next(databases)
    data_dir = tmp_path_factory.mktemp("batches")
    config = ServerConfig(
        data_dir=data_dir, listen="127.0.0.1:0", agent_listen="127.0.0.1:0", db_url=db_url
    )
    server = ThreadedControlPlane(config)
    plane = server.start()
    try:
        project = tmp_path_factory.mktemp("project")
        (project / "flows.py").write_text("X = 1\n")
        bundle = pack_directory(project)
        token = create_api_token(data_dir, "operator", db_url=db_url)
        with ControlClient(plane.address, plane.ca_file, token=token) as operator:
            operator.ensure_bundle(bundle)
        yield Estate(config, plane.address, plane.ca_file, bundle.sha256, token)
    finally:
        server.stop()
        next(databases, None)  # drops the PostgreSQL database


class CountCalls(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Counts the unary RPCs a client makes, by method name."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        name = details.method.rsplit("/", 1)[-1]
        self.calls[name] = self.calls.get(name, 0) + 1
        return continuation(details, request)


def counted(client: ControlClient) -> CountCalls:
    """Route ``client``'s calls through a counting interceptor."""
    counter = CountCalls()
    channel = grpc.intercept_channel(client._channel, counter)
    client._stub = control_pb2_grpc.ControlServiceStub(channel)
    return counter


def new_run(client: ControlClient, estate: Estate) -> str:
    return client.create_run(f"f_{uuid.uuid4().hex[:8]}", "flows.py:f", {}, estate.bundle_sha256)


def stub(estate: Estate) -> tuple[control_pb2_grpc.ControlServiceStub, Any]:
    client = estate.client()
    metadata = (("authorization", f"Bearer {estate.operator_token}"),)
    return control_pb2_grpc.ControlServiceStub(client._channel), metadata


SPEC = StepSpec(name="parked", module="flows", function="parked", target="bench=parked")


def batch(keys: list[str], inputs: list[str] | None = None) -> control_pb2.StepBatch:
    if inputs is None:
        inputs = [f'{{"args":[{i}],"kwargs":{{}}}}' for i in range(len(keys))]
    return control_pb2.StepBatch(spec=spec_to_proto(SPEC), keys=keys, inputs_json=inputs)


# ---- submitting ------------------------------------------------------------------------------


def test_a_10000_item_map_is_one_rpc_and_stored_with_its_events(estate: Estate) -> None:
    with estate.client() as client:
        run_id = new_run(client, estate)
        runner = client.with_token(client.runner_tokens[run_id])
        calls = counted(runner)
        with activate(FlowContext(run_id, runner)):
            futures = parked.map(range(10_000))
        assert calls.calls == {"SubmitSteps": 1}
        assert len({f.step_run_id for f in futures}) == 10_000 and all(
            f.step_run_id for f in futures
        )
        assert [f.key for f in futures[:2]] == ["parked#1", "parked#2"]
    assert estate.count(run_id, StepRunRow, StepRunRow.state == "PENDING") == 10_000
    assert estate.count(run_id, AttemptRow, AttemptRow.state == "QUEUED") == 10_000
    assert estate.count(run_id, EventRow, EventRow.kind == "step.pending") == 10_000
    assert estate.count(run_id, EventRow, EventRow.kind == "attempt.queued") == 10_000


def test_a_larger_map_is_split_by_the_calls_per_request(estate: Estate) -> None:
    with estate.client() as client:
        run_id = new_run(client, estate)
        runner = client.with_token(client.runner_tokens[run_id])
        calls = counted(runner)
        with activate(FlowContext(run_id, runner, chunk_bytes=64 * 1024)):
            parked.map(range(3_000))  # ~30 bytes of inputs each: several requests by bytes
        assert 2 <= calls.calls["SubmitSteps"] <= 3
    assert estate.count(run_id, StepRunRow) == 3_000


def test_retrying_the_same_request_stores_nothing_twice(estate: Estate) -> None:
    api, metadata = stub(estate)
    with estate.client() as client:
        run_id = new_run(client, estate)
    keys = [f"parked#{i}" for i in range(1, 501)]
    request = control_pb2.SubmitStepsRequest(flow_run_id=run_id, batches=[batch(keys)])
    first = api.SubmitSteps(request, metadata=metadata)
    again = api.SubmitSteps(request, metadata=metadata)
    assert len(first.batches) == 1 and not first.batches[0].existing
    assert list(again.batches[0].step_run_ids) == list(first.batches[0].step_run_ids)
    assert [s.key for s in again.batches[0].existing] == keys
    assert all(s.existing and s.state == "PENDING" for s in again.batches[0].existing)
    assert estate.count(run_id, StepRunRow) == 500
    assert estate.count(run_id, AttemptRow) == 500
    assert estate.count(run_id, EventRow, EventRow.kind == "attempt.queued") == 500


def test_single_submissions_and_batches_share_one_request(estate: Estate) -> None:
    api, metadata = stub(estate)
    with estate.client() as client:
        run_id = new_run(client, estate)
    single = control_pb2.StepSubmission(
        key="one#1", spec=spec_to_proto(SPEC), inputs_json='{"args":[],"kwargs":{}}'
    )
    request = control_pb2.SubmitStepsRequest(
        flow_run_id=run_id, steps=[single], batches=[batch(["a#1", "a#2"]), batch(["b#1"])]
    )
    answer = api.SubmitSteps(request, metadata=metadata)
    assert [s.key for s in answer.steps] == ["one#1"]
    assert [len(b.step_run_ids) for b in answer.batches] == [2, 1]
    with estate.client() as client:
        stored = {s.key: s.step_run_id for s in client.get_run(run_id).steps}
    assert stored["a#2"] == answer.batches[0].step_run_ids[1]
    assert stored["b#1"] == answer.batches[1].step_run_ids[0]


def _requests(run_id: str) -> dict[str, tuple[control_pb2.SubmitStepsRequest, str]]:
    ok = '{"args":[],"kwargs":{}}'
    big = '{"args":["' + "x" * MAX_INPUTS_BYTES + '"],"kwargs":{}}'
    bad_spec = control_pb2.StepBatch(
        spec=spec_to_proto(StepSpec(name="p", module="flows", function="p", provider="Bad!")),
        keys=["p#1"],
        inputs_json=[ok],
    )
    single = control_pb2.StepSubmission(key="a#1", spec=spec_to_proto(SPEC), inputs_json=ok)
    too_many = [f"k#{i}" for i in range(MAX_CALLS_PER_REQUEST + 1)]
    cases = {
        "counts differ": (batch(["a#1", "a#2"], [ok]), "2 keys but 1 inputs"),
        "duplicate key": (batch(["a#1", "a#2", "a#1"]), "'a#1' appears twice"),
        "no keys": (batch([]), "has no keys"),
        "empty key": (batch(["a#1", ""]), "step key must be 1-512 characters"),
        "inputs too large": (batch(["a#1", "a#2"], [ok, big]), "above the limit"),
        "inputs not JSON": (batch(["a#1", "a#2"], [ok, "{nope"]), "not valid JSON"),
        "inputs not an object": (batch(["a#1"], ["[1]"]), "inputs_json must be"),
        "bad spec": (bad_spec, "not a provider name"),
        "too many calls": (batch(too_many, [ok] * len(too_many)), "split them over several"),
    }
    requests = {
        name: (control_pb2.SubmitStepsRequest(flow_run_id=run_id, batches=[b]), message)
        for name, (b, message) in cases.items()
    }
    across = control_pb2.SubmitStepsRequest(flow_run_id=run_id, steps=[single])
    across.batches.append(batch(["b#1", "a#1"]))
    requests["key of a single submission again in a batch"] = (across, "'a#1' appears twice")
    return requests


@pytest.mark.parametrize("case", list(_requests("x")))
def test_malformed_batches_are_refused_and_store_nothing(estate: Estate, case: str) -> None:
    api, metadata = stub(estate)
    with estate.client() as client:
        run_id = new_run(client, estate)
    request, message = _requests(run_id)[case]
    with pytest.raises(grpc.RpcError) as raised:
        api.SubmitSteps(request, metadata=metadata)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in raised.value.details()
    assert estate.count(run_id, StepRunRow) == 0
    assert estate.count(run_id, EventRow, EventRow.step_run_id.is_not(None)) == 0


def test_a_map_with_one_oversize_item_stores_none_of_its_calls(estate: Estate) -> None:
    with estate.client() as client:
        run_id = new_run(client, estate)
        runner = client.with_token(client.runner_tokens[run_id])
        context = FlowContext(run_id, runner)
        with activate(context), pytest.raises(ValidationError, match=r"parked#2.*above the limit"):
            parked.map([1, "x" * MAX_INPUTS_BYTES, 3])
        # Nothing was stored, so a retry in the flow body submits every call again.
        with activate(context):
            assert len({f.step_run_id for f in parked.map([1, 2])}) == 2
    assert estate.count(run_id, StepRunRow) == 2


# ---- watching --------------------------------------------------------------------------------


def _watch(api: Any, metadata: Any, run_id: str, *, batched: bool) -> list[control_pb2.RunUpdate]:
    request = control_pb2.WatchRunRequest(flow_run_id=run_id, batched=batched)
    return list(api.WatchRun(request, metadata=metadata, timeout=60))


def _settled_watch(api: Any, metadata: Any, run_id: str) -> list[control_pb2.RunUpdate]:
    """The plain watch once two in a row agree: a scheduling pass that read the attempts
    before the cancel committed may still store its waiting explanations after it (on
    PostgreSQL, under load), and the two watches compared must see the same history."""
    previous = _watch(api, metadata, run_id, batched=False)
    for _ in range(20):
        time.sleep(0.2)
        current = _watch(api, metadata, run_id, batched=False)
        if current == previous:
            return current
        previous = current
    raise AssertionError("the run's history kept growing after it was cancelled")


def test_a_batched_watch_carries_many_updates_per_message_in_event_order(estate: Estate) -> None:
    api, metadata = stub(estate)
    with estate.client() as client:
        run_id = new_run(client, estate)
        runner = client.with_token(client.runner_tokens[run_id])
        with activate(FlowContext(run_id, runner)):
            parked.map(range(1_500))
        client.cancel_run(run_id, "test: watch what is stored")  # every step ends CANCELLED
    plain = _settled_watch(api, metadata, run_id)
    messages = _watch(api, metadata, run_id, batched=True)
    updates = [u for m in messages for u in m.batch]
    assert all(m.batch and not m.event_id for m in messages)
    assert len(messages) < len(updates) / 100
    assert [u.event_id for u in updates] == [u.event_id for u in plain]
    assert updates == plain  # the same updates, outcomes included
    outcomes = [u.step_outcome for u in updates if u.HasField("step_outcome")]
    assert len(outcomes) == 1_500 and {o.state for o in outcomes} == {"CANCELLED"}
    assert updates[-1].run_state == "CANCELLED"


def test_a_batched_watch_resumes_after_the_event_id_given(estate: Estate) -> None:
    api, metadata = stub(estate)
    with estate.client() as client:
        run_id = new_run(client, estate)
        runner = client.with_token(client.runner_tokens[run_id])
        with activate(FlowContext(run_id, runner)):
            parked.map(range(20))
        client.cancel_run(run_id, "test")
    everything = [u for m in _watch(api, metadata, run_id, batched=True) for u in m.batch]
    middle = everything[len(everything) // 2].event_id
    request = control_pb2.WatchRunRequest(flow_run_id=run_id, after_event_id=middle, batched=True)
    rest = [u for m in api.WatchRun(request, metadata=metadata, timeout=60) for u in m.batch]
    assert rest == [u for u in everything if u.event_id > middle]


def test_a_resumed_map_gets_every_stored_outcome_however_large(estate: Estate) -> None:
    """30 results of 300 KB (9 MB) do not fit one answer (4 MiB of outcomes, 16 MiB
    messages): the runner asks again for the ones left out, and every future resolves."""
    big = '"' + "r" * 300_000 + '"'
    with estate.client() as client:
        run_id = new_run(client, estate)
        runner = client.with_token(client.runner_tokens[run_id])
        with activate(FlowContext(run_id, runner)):
            parked.map(range(30))
        store = Store(estate.config.database_url)
        try:

            def complete(session: Any) -> None:
                query = select(StepRunRow).where(StepRunRow.flow_run_id == run_id)
                for step_run in session.scalars(query):
                    step_run.state, step_run.result_json = "COMPLETED", big

            store.run_sync(complete)
        finally:
            store.close()
        runner.finish_run(run_id, False)
        resumed = client.resume_run(run_id)
        again = client.with_token(resumed.runner_token)
        calls = counted(again)
        with activate(FlowContext(run_id, again)):
            futures = parked.map(range(30))
        assert all(f.done() and f.result() == big[1:-1] for f in futures)
        assert calls.calls["SubmitSteps"] >= 3  # 4 MiB of outcomes per answer at most
    assert estate.count(run_id, StepRunRow) == 30
