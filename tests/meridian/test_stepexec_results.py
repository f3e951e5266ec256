"""Results and inputs by reference in meridian.stepexec, run as a real subprocess (and in a
warm worker): result.bin written atomically with its digest, input files loaded in place of
their markers, and the limits of a provider without a work dir."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from meridian.core import serializers
from meridian.core.resultref import ResultRef, ref_marker
from meridian.core.stepfiles import InputFile, ResultPolicy, spec_fields
from providers.shared.outcome import parse_result_marker, read_outcome
from tests.meridian.test_stepexec_worker import Worker
from tests.support.deadlines import DEADLINE_S

REPO_ROOT = Path(__file__).resolve().parents[2]

STEPS = """\
import pandas as pd


def rows(n):
    return [{"i": i, "name": f"row {i}"} for i in range(n)]


def frame(n):
    return pd.DataFrame({"x": list(range(n)), "y": [float(i) / 2 for i in range(n)]})


def numbers():
    return {1, 2, 3}


def small():
    return {"n": 1}


def kind(v):
    if isinstance(v, pd.DataFrame):
        return ["DataFrame", int(v["x"].sum())]
    if isinstance(v, set):
        return ["set", sorted(v)]
    if isinstance(v, list):
        return ["list", [kind(x) for x in v]]
    if isinstance(v, dict):
        return ["dict", {k: kind(x) for k, x in v.items()}]
    return [type(v).__name__, v]


def describe(*args, **kwargs):
    return {"args": [kind(a) for a in args], "kwargs": {k: kind(v) for k, v in kwargs.items()}}
"""


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    root = tmp_path / "bundle"
    root.mkdir()
    (root / "result_steps.py").write_text(STEPS)
    return root


def _spec(bundle: Path, function: str, inputs: Any = None, **extra: Any) -> dict[str, Any]:
    return {
        "module": "result_steps",
        "function": function,
        "inputs_json": json.dumps(inputs or {"args": [], "kwargs": {}}),
        "bundle_dir": str(bundle),
        "step_key": f"{function}#1",
        **extra,
    }


def run_in(work: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """``python -m meridian.stepexec --work-dir`` as the process provider starts it."""
    work.mkdir(exist_ok=True)
    (work / "spec.json").write_text(json.dumps(spec))
    proc = subprocess.run(
        [sys.executable, "-m", "meridian.stepexec", "--work-dir", str(work)],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
    )
    outcome: dict[str, Any] = json.loads((work / "outcome.json").read_text())
    assert proc.returncode == (0 if outcome["state"] == "succeeded" else 1), proc.stderr
    return outcome


def _policy(**changes: Any) -> dict[str, Any]:
    return spec_fields(ResultPolicy(**changes), {})


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_small_json_stays_inline_in_the_usual_form(tmp_path: Path, bundle: Path) -> None:
    outcome = run_in(tmp_path / "w", _spec(bundle, "small", **_policy()))
    assert outcome == {"state": "succeeded", "result_json": '{"n": 1}'}
    assert not (tmp_path / "w" / "result.bin").exists()


def test_json_at_the_threshold_goes_to_result_bin_with_its_digest(
    tmp_path: Path, bundle: Path
) -> None:
    work = tmp_path / "w"
    spec = _spec(bundle, "rows", {"args": [20_000], "kwargs": {}}, **_policy())
    outcome = run_in(work, spec)
    assert set(outcome) == {"state", "result_file"}
    described = outcome["result_file"]
    path = work / described["path"]
    assert described["path"] == "result.bin" and described["serializer"] == "json"
    assert described["size"] == path.stat().st_size > 256 * 1024
    assert described["sha256"] == _file_digest(path)
    value = serializers.load(path, "json")
    assert len(value) == 20_000 and value[-1] == {"i": 19_999, "name": "row 19999"}
    # Nothing but the documents and the result: the temporary file was renamed away.
    assert sorted(p.name for p in work.iterdir()) == ["outcome.json", "result.bin", "spec.json"]
    # The provider's reader finds the same file, next to the outcome it read.
    read = read_outcome(work)
    assert read is not None and read.result_file is not None
    assert read.result_path(tmp_path / "elsewhere") == path


def test_a_lower_threshold_or_a_named_store_moves_small_results_too(
    tmp_path: Path, bundle: Path
) -> None:
    low = run_in(tmp_path / "low", _spec(bundle, "small", **_policy(inline_threshold=8)))
    assert low["result_file"]["size"] == len(b'{"n": 1}')
    stored = run_in(tmp_path / "s", _spec(bundle, "small", **_policy(by_reference=True)))
    assert serializers.load(tmp_path / "s" / "result.bin", "json") == {"n": 1}
    assert stored["result_file"]["sha256"] == hashlib.sha256(b'{"n": 1}').hexdigest()


def test_a_dataframe_is_written_as_parquet_and_reads_back_equal(
    tmp_path: Path, bundle: Path
) -> None:
    work = tmp_path / "w"
    outcome = run_in(work, _spec(bundle, "frame", {"args": [1000], "kwargs": {}}, **_policy()))
    described = outcome["result_file"]
    assert described["serializer"] == "parquet"
    assert described["sha256"] == _file_digest(work / "result.bin")
    loaded = serializers.load(work / "result.bin", "parquet")
    expected = pd.DataFrame({"x": list(range(1000)), "y": [i / 2 for i in range(1000)]})
    pd.testing.assert_frame_equal(loaded, expected)


def test_pickle_only_when_the_step_opted_in(tmp_path: Path, bundle: Path) -> None:
    refused = run_in(tmp_path / "a", _spec(bundle, "numbers", **_policy()))
    assert refused["state"] == "failed" and refused["error"]["error_class"] == "permanent"
    assert "not JSON-serializable" in refused["error"]["message"]
    assert 'serializer="pickle"' in refused["error"]["message"]
    opted = _policy(serializer="pickle", allow_pickle=True)
    outcome = run_in(tmp_path / "b", _spec(bundle, "numbers", **opted))
    assert outcome["result_file"]["serializer"] == "pickle"
    stored = serializers.load(tmp_path / "b" / "result.bin", "pickle", trusted={"pickle"})
    assert stored == {1, 2, 3}


def test_without_a_policy_results_stay_inline_json_as_before(tmp_path: Path, bundle: Path) -> None:
    big = run_in(tmp_path / "a", _spec(bundle, "rows", {"args": [20_000], "kwargs": {}}))
    assert len(json.loads(big["result_json"])) == 20_000
    frame = run_in(tmp_path / "b", _spec(bundle, "frame", {"args": [3], "kwargs": {}}))
    assert frame["state"] == "failed" and "not JSON-serializable" in frame["error"]["message"]


def test_from_an_environment_variable_a_stored_result_fails_saying_why(bundle: Path) -> None:
    """Containers: no work dir the agent can read, so results travel inline only."""
    spec = _spec(bundle, "rows", {"args": [20_000], "kwargs": {}}, **_policy())
    proc = subprocess.run(
        [sys.executable, "-m", "meridian.stepexec", "--spec-env", "STEP_SPEC"],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "STEP_SPEC": json.dumps(spec)},
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
    )
    assert proc.returncode == 1
    outcome = parse_result_marker(proc.stdout)
    assert outcome is not None and outcome.state == "failed" and outcome.error is not None
    assert outcome.error.error_class == "permanent"
    assert "returns results inline only" in outcome.error.message
    assert f"({256 * 1024} bytes of JSON)" in outcome.error.message


# -- inputs by reference -----------------------------------------------------------------------


def _stored(directory: Path, name: str, value: Any, serializer: str) -> tuple[ResultRef, InputFile]:
    """A result file as an agent materializes it, and the reference the inputs name."""
    path = directory / name
    serializers.dump(value, path, serializer, allow_pickle=serializer == "pickle")
    size, digest = path.stat().st_size, _file_digest(path)
    ref = ResultRef("aws-prod", "s3-main", f"s3://b/{name}", size, digest, serializer)
    return ref, InputFile(str(path), serializer, size, digest)


def test_input_markers_are_replaced_by_the_loaded_values(tmp_path: Path, bundle: Path) -> None:
    json_ref, json_file = _stored(tmp_path, "rows.json", [1, 2, 3], "json")
    frame = pd.DataFrame({"x": [1, 2, 3, 4]})
    frame_ref, frame_file = _stored(tmp_path, "frame.parquet", frame, "parquet")
    inputs = {
        "args": [ref_marker(json_ref), [ref_marker(frame_ref)]],
        "kwargs": {"again": {"nested": ref_marker(json_ref)}, "plain": 7},
    }
    files = {f.sha256: f for f in (json_file, frame_file)}
    spec = _spec(bundle, "describe", inputs, **spec_fields(ResultPolicy(), files))
    outcome = run_in(tmp_path / "w", spec)
    numbers = ["list", [["int", 1], ["int", 2], ["int", 3]]]
    assert json.loads(outcome["result_json"]) == {
        "args": [numbers, ["list", [["DataFrame", 10]]]],
        "kwargs": {"again": ["dict", {"nested": numbers}], "plain": ["int", 7]},
    }


def test_an_input_dataframe_arrives_as_a_dataframe(tmp_path: Path, bundle: Path) -> None:
    ref, item = _stored(tmp_path, "frame.parquet", pd.DataFrame({"x": [1, 2, 3, 4]}), "parquet")
    inputs = {"args": [ref_marker(ref)], "kwargs": {"n": ref_marker(ref)}}
    spec = _spec(bundle, "describe", inputs, **spec_fields(ResultPolicy(), {ref.sha256: item}))
    outcome = run_in(tmp_path / "w", spec)
    assert json.loads(outcome["result_json"]) == {
        "args": [["DataFrame", 10]],
        "kwargs": {"n": ["DataFrame", 10]},
    }


def test_a_marker_without_an_input_file_fails_before_the_step_runs(
    tmp_path: Path, bundle: Path
) -> None:
    ref, _ = _stored(tmp_path, "rows.json", [1], "json")
    spec = _spec(bundle, "describe", {"args": [ref_marker(ref)], "kwargs": {}}, **_policy())
    outcome = run_in(tmp_path / "w", spec)
    error = outcome["error"]
    assert outcome["state"] == "failed" and error["error_class"] == "permanent"
    assert "has no input file" in error["message"] and ref.sha256[:12] in error["message"]
    assert error["type"] == "meridian.core.resultio.InputRefError"  # the real problem


def test_a_half_marker_is_refused(tmp_path: Path, bundle: Path) -> None:
    ref, item = _stored(tmp_path, "rows.json", [1], "json")
    inputs = {"args": [{**ref_marker(ref), "also": 1}], "kwargs": {}}
    spec = _spec(bundle, "describe", inputs, **spec_fields(ResultPolicy(), {ref.sha256: item}))
    outcome = run_in(tmp_path / "w", spec)
    assert outcome["state"] == "failed" and "exactly" in outcome["error"]["message"]


def test_a_missing_input_file_names_the_path(tmp_path: Path, bundle: Path) -> None:
    ref, item = _stored(tmp_path, "rows.json", [1], "json")
    Path(item.path).unlink()
    spec = _spec(
        bundle,
        "describe",
        {"args": [ref_marker(ref)], "kwargs": {}},
        **spec_fields(ResultPolicy(), {ref.sha256: item}),
    )
    outcome = run_in(tmp_path / "w", spec)
    assert outcome["state"] == "failed" and item.path in outcome["error"]["message"]


def test_a_pickled_input_needs_the_consuming_step_to_opt_in(tmp_path: Path, bundle: Path) -> None:
    ref, item = _stored(tmp_path, "set.pickle", {4, 5}, "pickle")
    inputs = {"args": [ref_marker(ref)], "kwargs": {}}
    files = {ref.sha256: item}
    refused = run_in(tmp_path / "a", _spec(bundle, "describe", inputs, **spec_fields(None, files)))
    assert refused["state"] == "failed" and refused["error"]["error_class"] == "permanent"
    assert "runs code" in refused["error"]["message"]
    assert 'serializer="pickle"' in refused["error"]["message"]
    trusting = spec_fields(ResultPolicy(serializer="pickle", allow_pickle=True), files)
    outcome = run_in(tmp_path / "b", _spec(bundle, "describe", inputs, **trusting))
    path = tmp_path / "b" / outcome["result_file"]["path"]
    with open(path, "rb") as f:
        assert pickle.load(f) == {"args": [["set", [4, 5]]], "kwargs": {}}
    assert outcome["result_file"]["serializer"] == "pickle"


# -- the warm worker ---------------------------------------------------------------------------


def test_the_warm_worker_writes_result_files_too(tmp_path: Path, bundle: Path) -> None:
    worker = Worker(tmp_path)
    try:
        assert worker.receive()["op"] == "ready"
        work = tmp_path / "warm"
        work.mkdir()
        spec = _spec(bundle, "rows", {"args": [20_000], "kwargs": {}}, **_policy())
        (work / "spec.json").write_text(json.dumps(spec))
        worker.send({"op": "run", "work_dir": str(work), "cwd": str(work), "env": {}})
        assert worker.receive()["state"] == "succeeded"
        outcome = json.loads((work / "outcome.json").read_text())
        assert outcome["result_file"]["sha256"] == _file_digest(work / "result.bin")
        assert len(serializers.load(work / "result.bin", "json")) == 20_000
        assert worker.finish() == 0
    finally:
        if worker.proc.poll() is None:
            worker.proc.kill()
            worker.proc.wait()
