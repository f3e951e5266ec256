"""Caching across runs, end to end: a real control plane and agents (separate processes,
loopback TLS) run a flow with a cached step several times through `meridian run`. Whether the
step body ran is counted in a file the step appends to (never inferred from timing)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from tests.integration.harness import Estate

FLOW_SOURCE = """
from pathlib import Path

from meridian import flow, step


@step(cache=True)
def expensive(work: str, n: int) -> int:
    with open(Path(work) / "expensive.calls", "a") as calls:
        calls.write("x")
    return {body}


@step(cache=True)
def square(n: int, work: str) -> int:
    with open(Path(work) / f"square-{{n}}.calls", "a") as calls:
        calls.write("x")
    return n * n


@flow
def cached(work: str, n: int = 1) -> int:
    return expensive(work, n)


@flow
def cached_map(work: str, items: list) -> list:
    return [f.result() for f in square.map(items, work=work)]
"""


def write_flows(directory: Path, body: str = "n * 10") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "cache_flows.py"
    path.write_text(textwrap.dedent(FLOW_SOURCE.format(body=body)))
    return path


def run(estate: Estate, file: Path, flow: str, *params: str) -> dict:
    """Run ``flow`` to completion; its ``runs show --json`` document."""
    args = ["run", f"{file}:{flow}"]
    for p in params:
        args += ["-p", p]
    result = estate.cli(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    run_id = estate.client().list_runs(limit=1, flow_name=flow)[0].flow_run_id
    shown = estate.cli("runs", "show", run_id, "--json", check=True)
    detail: dict = json.loads(shown.stdout)
    assert detail["state"] == "COMPLETED"
    return detail


def only_step(detail: dict) -> dict:
    (step,) = detail["steps"]
    return step


def calls(work: Path, name: str) -> int:
    path = work / f"{name}.calls"
    return len(path.read_text()) if path.exists() else 0


def test_a_cached_step_is_reused_and_reruns_when_inputs_or_code_change(
    estate: Estate, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    flows = write_flows(tmp_path / "v1")
    first = run(estate, flows, "cached", f"work={work}", "n=2")
    assert (first["result"], only_step(first)["state"], calls(work, "expensive")) == (
        20,
        "COMPLETED",
        1,
    )

    second = run(estate, flows, "cached", f"work={work}", "n=2")
    step = only_step(second)
    assert (second["result"], step["state"], step["attempts"]) == (20, "CACHED", [])
    assert step["reused_from"] == {"flow_run_id": first["flow_run_id"], "step_key": "expensive#1"}
    assert calls(work, "expensive") == 1  # the body did not run again
    text = estate.cli("runs", "show", second["flow_run_id"], check=True).stdout
    assert f"reused from run {first['flow_run_id']}" in text

    changed_input = run(estate, flows, "cached", f"work={work}", "n=3")
    assert (changed_input["result"], only_step(changed_input)["state"]) == (30, "COMPLETED")
    assert calls(work, "expensive") == 2

    # The same module and function in a new bundle whose step source differs: a new key.
    changed_code = run(
        estate, write_flows(tmp_path / "v2", "n * 10 + 1"), "cached", f"work={work}", "n=2"
    )
    assert (changed_code["result"], only_step(changed_code)["state"]) == (21, "COMPLETED")
    assert calls(work, "expensive") == 3


def test_a_map_runs_only_its_items_without_a_cached_result(estate: Estate, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    flows = write_flows(tmp_path / "flows")
    first = run(estate, flows, "cached_map", f"work={work}", "items=[1, 2]")
    assert first["result"] == [1, 4]
    second = run(estate, flows, "cached_map", f"work={work}", "items=[1, 2, 3]")
    assert second["result"] == [1, 4, 9]
    states = {s["key"]: s["state"] for s in second["steps"]}
    assert states == {"square#1": "CACHED", "square#2": "CACHED", "square#3": "COMPLETED"}
    assert [calls(work, f"square-{n}") for n in (1, 2, 3)] == [1, 1, 1]
