"""Result files and input files through the providers: the spec documents they write, the
strict reading of outcomes that name a result file, and the process provider end to end
(real step processes, fresh and warm)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from meridian.core.stepfiles import InputFile, ResultFile, ResultPolicy
from providers.aws_ecs.task import environment
from providers.base import ExecutionSpec, Outcome
from providers.kubernetes.manifest import step_spec_json
from providers.process import ProcessProvider
from providers.ray.config import RayConfig, job_request
from providers.shared.outcome import parse_outcome, parse_result_marker, read_outcome
from providers.slurm.config import SlurmConfig
from providers.slurm.job import write_job_files
from providers.testing import ProviderConformance

DIGEST = "ef" * 32
POLICY = ResultPolicy(inline_threshold=1024, by_reference=False, serializer="", allow_pickle=False)
FILES = {DIGEST: InputFile("/data/in/x.parquet", "parquet", 10, DIGEST)}


def _plain(work_dir: Path) -> ExecutionSpec:
    return ExecutionSpec(
        attempt_id="att-1", flow_run_id="run-1", step_run_id="sr-1", step_key="load#1",
        step_name="load", attempt_number=1, module="m", function="f", inputs_json="{}",
        bundle_dir=None, work_dir=work_dir,
    )  # fmt: skip


def _expected_fields() -> dict[str, Any]:
    return {
        "result": POLICY.to_value(),
        "input_files": {DIGEST: FILES[DIGEST].to_value()},
    }


def test_result_fields_are_empty_until_the_agent_sets_them(tmp_path: Path) -> None:
    assert _plain(tmp_path).result_fields() == {}
    spec = replace(_plain(tmp_path), result_policy=POLICY, input_files=FILES)
    assert spec.result_fields() == _expected_fields()


def test_every_provider_writing_a_step_spec_merges_the_result_fields(tmp_path: Path) -> None:
    spec = replace(_plain(tmp_path / "work"), result_policy=POLICY, input_files=FILES)
    docs = {
        "kubernetes": json.loads(step_spec_json(spec, "/code")),
        "ecs": json.loads(environment(spec, True, "/code")["MERIDIAN_STEP_SPEC"]),
    }
    job_dir = tmp_path / "slurm-job"
    write_job_files(SlurmConfig.of({}), spec, job_dir)
    docs["slurm"] = json.loads((job_dir / "spec.json").read_text())
    uploading = replace(spec, bundle_dir=tmp_path, options={"upload_bundle": True})
    uploaded = job_request(RayConfig.of({}), uploading, "sub-1")
    docs["ray (uploaded)"] = json.loads(uploaded["runtime_env"]["env_vars"]["MERIDIAN_STEP_SPEC"])
    (tmp_path / "work").mkdir()
    job_request(RayConfig.of({}), spec, "sub-2")
    docs["ray (shared)"] = json.loads((tmp_path / "work" / "spec.json").read_text())
    for name, doc in docs.items():
        assert {k: doc[k] for k in ("result", "input_files")} == _expected_fields(), name


# -- outcomes naming a result file -------------------------------------------------------------

GOOD = {"path": "result.bin", "size": 5, "sha256": DIGEST, "serializer": "json"}


def test_an_outcome_may_name_a_result_file_instead_of_json() -> None:
    outcome = parse_outcome(json.dumps({"state": "succeeded", "result_file": GOOD}))
    assert outcome.state == "succeeded" and outcome.result_json is None
    assert outcome.result_file == ResultFile("result.bin", 5, DIGEST, "json")
    assert outcome.result_path(Path("/w")) == Path("/w/result.bin")
    assert Outcome("succeeded", result_json="1").result_path(Path("/w")) is None


@pytest.mark.parametrize(
    ("result_file", "why"),
    [
        ({**GOOD, "path": "../result.bin"}, "plain file name"),
        ({**GOOD, "path": "sub/result.bin"}, "plain file name"),
        ({**GOOD, "path": "/etc/passwd"}, "plain file name"),
        ({**GOOD, "path": ".."}, "plain file name"),
        ({**GOOD, "size": "5"}, "size"),
        ({**GOOD, "size": True}, "size"),
        ({**GOOD, "size": -1}, "size"),
        ({**GOOD, "sha256": DIGEST.upper()}, "sha256"),
        ({**GOOD, "sha256": 5}, "sha256"),
        ({**GOOD, "serializer": "yaml"}, "serializer"),
        ({k: v for k, v in GOOD.items() if k != "size"}, "keys"),
        ({**GOOD, "url": "s3://x"}, "keys"),
        ("result.bin", "keys"),
    ],
)
def test_a_malformed_result_file_is_an_infrastructure_failure(result_file: Any, why: str) -> None:
    outcome = parse_outcome(json.dumps({"state": "succeeded", "result_file": result_file}))
    assert outcome.state == "failed" and outcome.error is not None
    assert outcome.error.error_class == "infrastructure"
    assert why in outcome.error.message and outcome.result_file is None


def test_both_result_forms_at_once_are_refused() -> None:
    text = json.dumps({"state": "succeeded", "result_json": "1", "result_file": GOOD})
    outcome = parse_outcome(text)
    assert outcome.state == "failed" and outcome.error is not None
    assert "not both" in outcome.error.message


def test_a_stdout_marker_cannot_name_a_result_file() -> None:
    line = json.dumps({"state": "succeeded", "result_file": GOOD})
    outcome = parse_result_marker(f"noise\n::meridian-outcome::{line}\n")
    assert outcome is not None and outcome.state == "failed" and outcome.error is not None
    assert outcome.error.error_class == "infrastructure"
    assert "returns results inline only" in outcome.error.message


def test_read_outcome_locates_the_file_next_to_the_outcome(tmp_path: Path) -> None:
    (tmp_path / "outcome.json").write_text(json.dumps({"state": "succeeded", "result_file": GOOD}))
    outcome = read_outcome(tmp_path)
    assert outcome is not None and outcome.result_dir == tmp_path
    # A Slurm shared directory: the agent's own work dir is elsewhere, the file is here.
    assert outcome.result_path(Path("/agent/work")) == tmp_path / "result.bin"


# -- the process provider end to end -----------------------------------------------------------

STEPS = """\
def rows(n):
    return [{"i": i} for i in range(n)]


def total(values):
    return sum(v["i"] for v in values)
"""


class _Harness(ProviderConformance):
    def make_bundle(self, bundle_dir: Path) -> Path:
        bundle_dir.mkdir(parents=True, exist_ok=True)
        (bundle_dir / "result_steps.py").write_text(STEPS)
        return bundle_dir


H = _Harness()


@pytest.mark.parametrize("warm_workers", [0, 1])
def test_the_process_provider_hands_back_a_result_file_and_reads_input_files(
    tmp_path: Path, warm_workers: int
) -> None:
    bundle = H.make_bundle(tmp_path / "bundle")
    provider = ProcessProvider({"kill_grace_s": 1.0, "warm_workers": warm_workers})
    produce = replace(
        H.make_spec(bundle, "rows", [5000]), module="result_steps", result_policy=POLICY
    )

    async def scenario(session: Any) -> tuple[Outcome, Outcome]:
        first = await provider.wait(await session.submit(provider, produce))
        path = first.result_path(produce.work_dir)
        assert first.result_file is not None and path is not None
        size, digest = first.result_file.size, first.result_file.sha256
        marker = {"$meridian_ref": {
            "v": 1, "environment": "onprem", "store": "scratch", "uri": "file:///r/x",
            "size": size, "sha256": digest, "serializer": "json", "sealed": False,
        }}  # fmt: skip
        consume = replace(
            H.make_spec(bundle, "total", [marker]),
            module="result_steps",
            result_policy=POLICY,
            input_files={digest: InputFile(str(path), "json", size, digest)},
        )
        second = await provider.wait(await session.submit(provider, consume))
        return first, second

    first, second = H.run(provider, scenario)
    assert first.state == "succeeded" and first.result_file is not None
    path = first.result_path(produce.work_dir)
    assert path is not None
    assert hashlib.sha256(path.read_bytes()).hexdigest() == first.result_file.sha256
    assert second.state == "succeeded" and second.result_json == str(sum(range(5000)))
