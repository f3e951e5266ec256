"""Results that stay at their site, on the flow runner's side: ``@step`` options, references
passed to steps as markers (and listed beside the inputs), futures resolving to
``meridian.ResultRef``, its ``load``/``save`` through ``ControlClient.fetch_result`` against a
fake control plane on real gRPC, and cache keys that digest a reference by its sha256."""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import meridian
from meridian import (
    ConflictError,
    ConnectionFailed,
    NotFound,
    SealError,
    StepFailed,
    ValidationError,
    step,
)
from meridian.client import ControlClient, _ResultDownload
from meridian.core import resultref, sealing, serializers
from meridian.core.cachekey import bind_inputs, default_cache_key
from meridian.core.errors import PermissionDenied
from meridian.core.sealedfile import seal_file
from meridian.core.sealing import KeyRing
from meridian.models import StepOutcome
from meridian.sdk.context import FlowContext, activate
from meridian.sdk.results import ResultRef
from meridian.sdk.runner import _run_body
from tests.meridian.result_server import ResultServer, StoredResult, serve_results
from tests.meridian.test_sdk_step import RecordingSubmitter
from tests.support.deadlines import DEADLINE_S
from tests.support.tls import Tls

DIGEST = "ab" * 32


def _ref(digest: str = DIGEST, **changes: Any) -> resultref.ResultRef:
    fields: dict[str, Any] = {
        "environment": "aws-prod",
        "store": "s3-main",
        "uri": f"s3://bucket/{digest[:6]}/result",
        "size": 10,
        "sha256": digest,
        "serializer": "parquet",
        "sealed": False,
    }
    fields.update(changes)
    return resultref.ResultRef(**fields)


@step
def consume(*frames: Any, **named: Any) -> int:
    return len(frames) + len(named)


@step(result_store="scratch", inline_threshold=1024, serializer="parquet")
def produce() -> None:
    return None


@step(seal="eu-sites")
def sealed_consume(frame: Any) -> int:
    return 1


@step(cache=True)
def cached(frame: Any, n: int = 1) -> int:
    return n


# -- @step options -----------------------------------------------------------------------------


def test_result_options_are_carried_in_the_spec() -> None:
    assert (produce.spec.result_store, produce.spec.inline_threshold_bytes) == ("scratch", 1024)
    assert produce.spec.serializer == "parquet"
    assert (consume.spec.result_store, consume.spec.inline_threshold_bytes) == ("", 0)
    assert consume.spec.serializer == ""


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"result_store": "S3 Main"}, "result_store 'S3 Main' must name a result store"),
        ({"result_store": ""}, "result_store"),
        ({"inline_threshold": 0}, "from 1 to 4194304 bytes.*name a result_store"),
        ({"inline_threshold": 4 * 1024 * 1024 + 1}, "from 1 to 4194304"),
        ({"inline_threshold": True}, "number of bytes"),
        ({"inline_threshold": 1.5}, "number of bytes"),
        ({"serializer": "yaml"}, "one of 'bytes', 'json', 'parquet', 'pickle', or None"),
        ({"serializer": ["json"]}, "one of 'bytes', 'json', 'parquet', 'pickle'"),
    ],
)
def test_bad_result_options_are_refused_at_decoration(options: dict[str, Any], match: str) -> None:
    def fn() -> None:
        return None

    with pytest.raises(ValidationError, match=match) as info:
        step(**options)(fn)
    assert "step 'fn'" in str(info.value)


def test_an_empty_serializer_means_automatic_like_none() -> None:
    assert step(serializer="")(lambda: None).spec.serializer == ""
    assert step(serializer=None)(lambda: None).spec.serializer == ""


def test_pickle_is_an_explicit_opt_in_documented_on_the_decorator() -> None:
    assert step(serializer="pickle")(lambda: None).spec.serializer == "pickle"
    assert step.__doc__ is not None and "loading a" in step.__doc__
    assert "pickle runs code" in " ".join(step.__doc__.split())


# -- references passed to steps ----------------------------------------------------------------


def test_references_travel_as_markers_and_are_listed_beside_the_inputs() -> None:
    first, second = _ref("aa" * 32), _ref("bb" * 32)
    submitter = RecordingSubmitter()
    with activate(FlowContext("run-1", submitter)):
        consume.submit(first, [second], extra={"again": first})
    (sub,) = submitter.calls[0]
    inputs = json.loads(sub.inputs_json)
    assert inputs["args"] == [resultref.ref_marker(first), [resultref.ref_marker(second)]]
    assert inputs["kwargs"] == {"extra": {"again": resultref.ref_marker(first)}}
    assert [resultref.ResultRef.from_json(r) for r in sub.input_refs_json] == [first, second]


def test_a_call_without_references_lists_none() -> None:
    submitter = RecordingSubmitter()
    with activate(FlowContext("run-1", submitter)):
        consume.submit(1, x=[2])
    assert submitter.calls[0][0].input_refs_json == ()


def test_a_dict_using_the_reserved_key_is_refused() -> None:
    submitter = RecordingSubmitter()
    with activate(FlowContext("run-1", submitter)), pytest.raises(ValidationError) as info:
        consume.submit({"$meridian_ref": {"path": "/etc/passwd"}})
    assert "step 'consume'" in str(info.value) and "reference" in str(info.value)
    assert submitter.calls == []


def test_sealed_inputs_keep_the_marker_inside_and_the_list_outside() -> None:
    ring = KeyRing({"eu-sites": os.urandom(64)})
    ref = _ref(sealed=True)
    submitter = RecordingSubmitter()
    with activate(FlowContext("run-1", submitter, keys=ring)):
        sealed_consume.submit(ref)
    (sub,) = submitter.calls[0]
    assert ref.sha256 not in sub.inputs_json  # only ciphertext leaves the runner
    assert [resultref.ResultRef.from_json(r) for r in sub.input_refs_json] == [ref]
    opened = json.loads(sealing.open_inputs(ring, sub.inputs_json, "run-1", sub.key))
    assert opened["args"] == [resultref.ref_marker(ref)]


def test_cache_keys_digest_a_reference_by_its_sha256_alone() -> None:
    here = _ref(DIGEST)
    elsewhere = _ref(DIGEST, environment="gcp-eu", store="gcs-main", uri="gs://b/x")
    other = _ref("cd" * 32)
    submitter = RecordingSubmitter()
    with activate(FlowContext("run-1", submitter)):
        cached.submit(here)
        cached.submit(elsewhere)
        cached.submit(resultref.ref_marker(here))  # a marker counts as its reference
        cached.submit(other)
    keys = [call[0].cache_key for call in submitter.calls]
    assert keys[0] == keys[1] == keys[2] != keys[3]
    assert keys[0].startswith("ck2-")
    code = cached.cache.code if cached.cache else ""
    direct = default_cache_key("cached", code, bind_inputs(cached.fn, [DIGEST], {}))
    assert direct != keys[0]  # the digest stands in as a reference, not as a plain string


# -- futures resolve to ResultRef --------------------------------------------------------------


def _stored_outcome(key: str, ref: resultref.ResultRef) -> StepOutcome:
    return StepOutcome(f"sr-{key}", key, "COMPLETED", result_ref_json=ref.to_json())


def test_a_stored_result_resolves_to_a_result_ref_of_its_run_and_step() -> None:
    ref = _ref()
    submitter = RecordingSubmitter()
    context = FlowContext("run-1", submitter)
    with activate(context):
        future = consume.submit()
    context.resolve(_stored_outcome(future.key, ref))
    value = future.result(timeout=DEADLINE_S)
    assert isinstance(value, meridian.ResultRef) and isinstance(value, resultref.ResultRef)
    assert (value.flow_run_id, value.step_key) == ("run-1", future.key)
    assert value.to_value() == ref.to_value() and value.size == 10
    assert value.serializer == "parquet" and not value.sealed


def test_a_bad_reference_fails_the_future_as_infrastructure() -> None:
    submitter = RecordingSubmitter()
    context = FlowContext("run-1", submitter)
    with activate(context):
        future = consume.submit()
    context.resolve(StepOutcome("sr", future.key, "COMPLETED", result_ref_json='{"v": 2}'))
    error = future.exception(timeout=DEADLINE_S)
    assert isinstance(error, StepFailed) and error.error_class == "infrastructure"
    assert "bad result reference" in str(error)


def test_a_sealed_step_must_return_a_sealed_reference() -> None:
    ring = KeyRing({"eu-sites": os.urandom(64)})
    context = FlowContext("run-1", RecordingSubmitter(), keys=ring)
    with activate(context):
        plain = sealed_consume.submit(1)
        sealed = sealed_consume.submit(2)
    context.resolve(_stored_outcome(plain.key, _ref()))
    context.resolve(_stored_outcome(sealed.key, _ref(sealed=True)))
    error = plain.exception(timeout=DEADLINE_S)
    assert isinstance(error, StepFailed) and "is not sealed" in str(error)
    assert sealed.result(timeout=DEADLINE_S).sealed


def test_a_reference_returned_by_the_flow_is_reported_as_its_marker() -> None:
    ref = ResultRef.of(_ref(), "run-1", "produce#1")
    succeeded, result, _, _ = _run_body(lambda: {"table": ref, "rows": 3}, {})
    assert succeeded and result == {"table": resultref.ref_marker(_ref()), "rows": 3}
    assert json.loads(json.dumps(result))["table"]["$meridian_ref"]["sha256"] == DIGEST


# -- load and save through the control plane (real gRPC) ---------------------------------------


@pytest.fixture
def served(tls_material: Tls, tmp_path: Path) -> Iterator[ResultServer]:
    with serve_results(tls_material, tmp_path) as server:
        yield server


@pytest.fixture
def result_client(served: ResultServer) -> Iterator[ControlClient]:
    with ControlClient(served.address, served.ca_file, timeout_s=DEADLINE_S) as client:
        yield client


def _bound(served: ResultServer, client: ControlClient, key: str, **kw: Any) -> ResultRef:
    """The reference a runner's future resolves to for step ``key`` of the served run."""
    context = FlowContext(served.fake.run_id, client, **kw)
    ref = served.fake.stored[key].ref()
    future = meridian.StepFuture(key, key)
    context._resolve_opened(future, _stored_outcome(key, ref), "")
    value = future.result(timeout=0)
    assert isinstance(value, ResultRef)
    return value


def _parquet_bytes(tmp_path: Path, frame: pd.DataFrame) -> bytes:
    serializers.dump(frame, tmp_path / "f.parquet")
    return (tmp_path / "f.parquet").read_bytes()


def test_load_downloads_verifies_and_deserializes(
    served: ResultServer, result_client: ControlClient, tmp_path: Path
) -> None:
    frame = pd.DataFrame({"x": list(range(5000))})
    served.fake.stored["frame#1"] = StoredResult(_parquet_bytes(tmp_path, frame), "parquet")
    served.fake.chunk_bytes = 4096
    ref = _bound(served, result_client, "frame#1")
    pd.testing.assert_frame_equal(ref.load(), frame)
    assert served.fake.requests == [(served.fake.run_id, "frame#1", 0)]


def test_save_writes_the_bytes_without_deserializing(
    served: ResultServer, result_client: ControlClient, tmp_path: Path
) -> None:
    data = json.dumps(list(range(20_000))).encode()
    served.fake.stored["rows#1"] = StoredResult(data)
    ref = _bound(served, result_client, "rows#1")
    target = ref.save(tmp_path / "rows.json")
    assert target.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.crt", "rows.json"]


def test_a_download_cut_by_a_restart_resumes_from_its_offset(
    served: ResultServer, result_client: ControlClient, tmp_path: Path
) -> None:
    data = os.urandom(10_000)
    served.fake.stored["blob#1"] = StoredResult(data, "json")
    served.fake.cut_after_bytes = 4000
    fetched = result_client.fetch_result(served.fake.run_id, "blob#1", tmp_path / "blob")
    assert (tmp_path / "blob").read_bytes() == data and fetched.size == 10_000
    assert [offset for _, _, offset in served.fake.requests] == [0, 4000]


def test_corrupted_bytes_are_refused_and_nothing_is_left(
    served: ResultServer, result_client: ControlClient, tmp_path: Path
) -> None:
    served.fake.stored["rows#1"] = StoredResult(b"[1, 2, 3]" * 100)
    served.fake.corrupt = True
    ref = _bound(served, result_client, "rows#1")
    with pytest.raises(ConflictError, match="do not match their sha256"):
        ref.save(tmp_path / "out.json")
    assert not (tmp_path / "out.json").exists() and not (tmp_path / "out.json.part").exists()


def test_a_reference_naming_other_bytes_is_refused(
    served: ResultServer, result_client: ControlClient, tmp_path: Path
) -> None:
    served.fake.stored["rows#1"] = StoredResult(b"[1]")
    other = _ref(size=3, serializer="json")
    with pytest.raises(ConflictError, match="the reference names"):
        result_client.fetch_result(served.fake.run_id, "rows#1", tmp_path / "x", expected=other)


def test_errors_of_the_site_and_of_the_control_plane_are_meridian_errors(
    served: ResultServer, result_client: ControlClient, tmp_path: Path
) -> None:
    served.fake.stored["rows#1"] = StoredResult(b"[1]")
    with pytest.raises(NotFound, match="no stored result"):
        result_client.fetch_result(served.fake.run_id, "missing#1", tmp_path / "x")
    served.fake.error = "no agent of environment aws-prod is connected"
    with pytest.raises(ConflictError, match="no agent of environment aws-prod"):
        result_client.fetch_result(served.fake.run_id, "rows#1", tmp_path / "x")


def test_a_site_that_cannot_serve_now_is_named_not_an_unreachable_control_plane(
    served: ResultServer,
    result_client: ControlClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_ResultDownload, "RESUMES", 1)
    served.fake.stored["rows#1"] = StoredResult(b"[1]")
    served.fake.unavailable = "no agent of environment aws-prod is connected"
    result_client.get_run(served.fake.run_id)  # the control plane is reachable
    with pytest.raises(ConnectionFailed) as info:
        result_client.fetch_result(served.fake.run_id, "rows#1", tmp_path / "x")
    assert str(info.value).startswith("cannot download the stored result of step 'rows#1'")
    assert "no agent of environment aws-prod" in str(info.value)
    assert len(served.fake.requests) == 2  # tried again once, then gave up
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.part").exists()


def test_a_pickle_loads_only_when_trusted_and_is_refused_before_downloading(
    served: ResultServer, result_client: ControlClient
) -> None:
    served.fake.stored["obj#1"] = StoredResult(pickle.dumps({1, 2}), "pickle")
    ref = _bound(served, result_client, "obj#1")
    with pytest.raises(PermissionDenied, match="trust_pickle=True"):
        ref.load()
    assert served.fake.requests == []
    assert ref.load(trust_pickle=True) == {1, 2}


def test_a_sealed_result_is_opened_with_the_runners_keys(
    served: ResultServer, result_client: ControlClient, tmp_path: Path
) -> None:
    ring = KeyRing({"eu-sites": os.urandom(64)})
    plain = tmp_path / "plain.json"
    plain.write_text('{"secret": 42}')
    seal_file(ring, "eu-sites", plain, tmp_path / "sealed", served.fake.run_id, "s#1")
    stored = StoredResult((tmp_path / "sealed").read_bytes(), "json", sealed=True)
    served.fake.stored["s#1"] = stored
    ref = _bound(served, result_client, "s#1", keys=ring)
    assert ref.load() == {"secret": 42}
    stranger = _bound(served, result_client, "s#1", keys=KeyRing({"eu-sites": os.urandom(64)}))
    with pytest.raises(SealError):
        stranger.load()


def test_a_reference_not_from_a_running_flow_cannot_be_downloaded() -> None:
    with pytest.raises(ValidationError, match="pass it to a step instead"):
        ResultRef.of(_ref(serializer="json"), "", "").load()


def test_listed_references_count_towards_the_bytes_of_a_submission_chunk() -> None:
    refs = [_ref(f"{i:02x}" * 32) for i in range(10)]
    submitter = RecordingSubmitter()
    with activate(FlowContext("run-1", submitter, chunk_bytes=4000)):
        consume.map(refs)
    chunks = submitter.calls
    sizes = [
        sum(len(s.inputs_json) + sum(len(r) for r in s.input_refs_json) for s in chunk)
        for chunk in chunks
    ]
    assert len(chunks) > 1 and max(sizes) <= 4000, sizes
    assert sum(len(chunk) for chunk in chunks) == 10
