"""Every bench script runs with a tiny N and writes a result file with the expected keys.

The smoke test asserts that the benchmarks run and report, never how fast (docs/performance.md).
The scripts run at once, as subprocesses, so the whole module takes about as long as the
slowest one (~20-40 s on a busy 2-core machine). The real Prefect side of ``peers.py``
and of ``deploy_latency.py`` install Prefect and are marked ``slow`` (``pytest -m slow
tests/bench``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# The module's one fixture starts and waits for every script: allow it more than the default
# per-test timeout on a busy machine.
pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"
TIMEOUT_S = 150.0  # a bound for a very busy machine; ~20-40 s is usual

MACHINE_KEYS = {"nproc", "python", "git_commit", "cpu_model"}
DOCUMENT_KEYS = {
    "benchmark",
    "machine",
    "load_average_before",
    "load_average_after",
    "config",
    "results",
}

DEPLOY_LATENCY_ARGS = ["--skip-prefect", "--rounds", "1", "--n", "2", "--burst", "3",
                       "--agents", "1", "--runner-slots", "4"]  # fmt: skip

# script -> (arguments, keys its "results" must have)
SCRIPTS: dict[str, tuple[list[str], set[str]]] = {
    "throughput": (["--n", "5", "--m", "3"], {"fanout", "chain"}),
    "latency": (
        ["--n", "3"],
        {"submit_to_user_code_ms", "submit_to_running_ms", "steps_completed_in_store"},
    ),
    "footprint": (["--n", "3", "--idle-seconds", "1"], {"idle", "runner_waiting", "loaded"}),
    "fleet": (
        ["--agents", "3", "--steps", "5", "--idle-seconds", "1"],
        {"idle", "dispatch", "agents_connected", "simulated"},
    ),
    "peers": (["--skip-prefect", "--rounds", "1", "--n", "3", "--m", "2"], {"runs"}),
    "deploy_latency": (
        DEPLOY_LATENCY_ARGS,
        {"runs", "pooled"},
    ),
}


@dataclass
class Outcome:
    returncode: int
    output: str
    out_file: Path


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MERIDIAN_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Outcome]]:
    """Start every script at once (they share nothing but the machine), then wait for all."""
    root = tmp_path_factory.mktemp("bench")
    started: dict[str, tuple[subprocess.Popen[str], Path, Path]] = {}
    runs = {name: args for name, (args, _) in SCRIPTS.items()}
    runs["dispatch"] = ["--steps", "2", "--mode", "sequential", "--agents", "1"]
    try:
        for name, args in runs.items():
            out_file = root / f"{name}.json"
            log = root / f"{name}.log"
            with open(log, "w") as handle:
                proc = subprocess.Popen(
                    [sys.executable, str(BENCH / f"{name}.py"), *args, "--out", str(out_file)],
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    text=True,
                    cwd=root,
                    env=_env(),
                )
            started[name] = (proc, out_file, log)
        deadline = time.monotonic() + TIMEOUT_S
        results: dict[str, Outcome] = {}
        for name, (proc, out_file, log) in started.items():
            try:
                code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.terminate()  # the scripts clean up their estate on SIGTERM
                code = proc.wait(timeout=30)
            results[name] = Outcome(code, log.read_text(errors="replace")[-4000:], out_file)
        yield results
    finally:
        for proc, _, _ in started.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _document(outcome: Outcome) -> dict[str, Any]:
    assert outcome.returncode == 0, outcome.output
    assert outcome.out_file.exists(), outcome.output
    document: dict[str, Any] = json.loads(outcome.out_file.read_text())
    assert document.keys() >= DOCUMENT_KEYS
    assert document["machine"].keys() >= MACHINE_KEYS
    assert len(document["load_average_before"]) == 3
    return document


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_script_runs_and_reports(outcomes: dict[str, Outcome], name: str) -> None:
    document = _document(outcomes[name])
    assert document["benchmark"] == name
    assert SCRIPTS[name][1] <= document["results"].keys(), document["results"]


def test_dispatch_runs_with_an_api_token(outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes["dispatch"]
    assert outcome.returncode == 0, outcome.output
    document = json.loads(outcome.out_file.read_text())
    (result,) = document["results"]
    assert result["steps_completed"] == 2


def test_throughput_counts_completed_steps_from_the_store(outcomes: dict[str, Outcome]) -> None:
    results = _document(outcomes["throughput"])["results"]
    assert results["fanout"]["steps_completed_in_store"] == 5
    assert results["chain"]["steps_completed_in_store"] == 3
    assert {"p50", "p95"} <= results["chain"]["round_trip_ms"].keys()


def test_fleet_agents_connect_and_finish_steps(outcomes: dict[str, Outcome]) -> None:
    results = _document(outcomes["fleet"])["results"]
    assert results["agents_connected"] == 3
    assert results["dispatch"]["steps_completed_in_store"] == 5
    assert results["simulated"]["finished"] >= 5


def test_peers_skips_prefect_when_asked(outcomes: dict[str, Outcome]) -> None:
    document = _document(outcomes["peers"])
    assert document["config"]["prefect_skipped"]
    assert [run["system"] for run in document["results"]["runs"]] == ["meridian"]


def test_deploy_latency_runs_every_trigger_on_a_hosted_runner(
    outcomes: dict[str, Outcome],
) -> None:
    document = _document(outcomes["deploy_latency"])
    assert document["config"]["meridian_runner_slots"] == 4
    runs = document["results"]["runs"]
    # The fork server's side, and the fresh-interpreter runners of before it, side by side.
    assert [run["system"] for run in runs] == ["meridian", "meridian-fresh"]
    for run in runs:
        assert run["sequential"]["completed"] == 2
        assert run["sequential"]["trigger_to_body_ms"]["count"] == 2
        assert run["burst"]["completed"] == 3
        assert run["burst"]["all_completed_s"] is not None


@pytest.mark.slow
def test_deploy_latency_against_prefect(tmp_path: Path) -> None:
    """Installs Prefect (once), serves its flow against a local server and runs one round."""
    out_file = tmp_path / "deploy_latency.json"
    done = subprocess.run(
        [sys.executable, str(BENCH / "deploy_latency.py"), "--rounds", "1", "--n", "2",
         "--burst", "3", "--agents", "1", "--runner-slots", "4", "--skip-fresh",
         "--out", str(out_file)],
        capture_output=True, text=True, env=_env(), timeout=1200,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    document = json.loads(out_file.read_text())
    if document["config"]["prefect_skipped"]:
        pytest.skip(f"Prefect unavailable: {document['config']['prefect_skipped']}")
    runs = document["results"]["runs"]
    assert [run["system"] for run in runs] == ["meridian", "prefect"]
    assert runs[1]["sequential"]["completed"] == 2
    assert runs[1]["burst"]["completed"] == 3


@pytest.mark.slow
def test_peers_against_prefect(tmp_path: Path) -> None:
    """Installs Prefect into bench/.venv-prefect (once) and runs one tiny interleaved round."""
    out_file = tmp_path / "peers.json"
    done = subprocess.run(
        [sys.executable, str(BENCH / "peers.py"), "--rounds", "1", "--n", "3", "--m", "2",
         "--out", str(out_file)],
        capture_output=True, text=True, env=_env(), timeout=1200,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    document = json.loads(out_file.read_text())
    systems = [run["system"] for run in document["results"]["runs"]]
    if document["config"]["prefect_skipped"]:
        pytest.skip(f"Prefect unavailable: {document['config']['prefect_skipped']}")
    assert systems == ["meridian", "prefect"]
