"""What a step process loads: the executor imports only the shared core, never the SDK or CLI.

Runs the exact command the process provider starts (``python -m meridian.stepexec --work-dir
DIR``) on steps that report the modules loaded in their own process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.deadlines import DEADLINE_S

REPORT_MODULES = """
import sys

def loaded():
    prefixes = ("meridian", "grpc", "control_plane", "agent", "providers", "sqlalchemy")
    return sorted(m for m in sys.modules if m.split(".")[0] in prefixes)
"""

PLAIN_STEP = (
    REPORT_MODULES
    + """

def report():
    return loaded()
"""
)

DECORATED_STEP = (
    REPORT_MODULES
    + """
from meridian import flow, step


@step(target="cloud=aws")
def report():
    return loaded()


@flow
def pipeline():
    return report()
"""
)


def run_step(bundle: Path, work_dir: Path, module: str, function: str) -> list[str]:
    work_dir.mkdir()
    spec = {
        "step_key": f"{function}#1",
        "module": module,
        "function": function,
        "inputs_json": '{"args": [], "kwargs": {}}',
        "bundle_dir": str(bundle),
    }
    (work_dir / "spec.json").write_text(json.dumps(spec))
    done = subprocess.run(
        [sys.executable, "-m", "meridian.stepexec", "--work-dir", str(work_dir)],
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
        cwd=work_dir,
    )
    outcome = json.loads((work_dir / "outcome.json").read_text())
    assert done.returncode == 0 and outcome["state"] == "succeeded", (done.stderr, outcome)
    modules: list[str] = json.loads(outcome["result_json"])
    return modules


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    directory = tmp_path / "bundle"
    directory.mkdir()
    (directory / "plain_steps.py").write_text(PLAIN_STEP)
    (directory / "sdk_steps.py").write_text(DECORATED_STEP)
    return directory


def test_the_executor_loads_only_the_shared_core(bundle: Path, tmp_path: Path) -> None:
    modules = run_step(bundle, tmp_path / "plain", "plain_steps", "report")
    # The executor runs as ``__main__``; what it imported is the core's errors.
    assert "meridian.core.errors" in modules
    foreign = [m for m in modules if not m.startswith("meridian.core")]
    assert foreign == ["meridian"], foreign  # the lazy package itself, and nothing else


def test_a_step_written_with_the_sdk_loads_the_decorators_not_the_runner(
    bundle: Path, tmp_path: Path
) -> None:
    modules = run_step(bundle, tmp_path / "sdk", "sdk_steps", "report")
    # The step module itself asked for ``meridian.step``; nothing that runs flows, talks gRPC
    # or belongs to the CLI, the control plane or the agent comes along.
    unwanted = ("meridian.cli", "meridian.client", "meridian.sdk.runner", "meridian._convert")
    assert not [m for m in modules if m.startswith(unwanted)], modules
    assert not [m for m in modules if m.split(".")[0] in ("grpc", "control_plane", "agent")]
    assert "meridian.sdk.step" in modules
