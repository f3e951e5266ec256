"""Clean-up of stored results, end to end: a real control plane and an agent with a filesystem
result store (separate processes, loopback TLS). A run whose step result stayed in the store is
removed by `meridian runs delete`, its object by the agent; an object no run refers to is
reported by `meridian results gc --dry-run` and removed by `meridian results gc`, while an
object a run refers to stays."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from meridian.core.resultref import ResultRef
from tests.integration.harness import FLOWS, Estate

FLOW = FLOWS / "cleanup_flows.py"
TWO_HOURS = 2 * 3600


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("scratch")


@pytest.fixture(scope="module")
def estate(tmp_path_factory: pytest.TempPathFactory, scratch: Path) -> Iterator[Estate]:
    root = tmp_path_factory.mktemp("cleanup")
    config = root / "agent.toml"
    config.write_text(f'[result_stores.scratch]\ntype = "filesystem"\nroot = "{scratch}"\n')
    with Estate(root) as e:
        e.add_agent("site", {"site": "dc1"}, name="site-1", config=config)
        yield e


def stored_run(estate: Estate, scratch: Path) -> tuple[str, Path]:
    """Run the flow whose step result stays in the store: (run id, the object's file)."""
    result = estate.cli("run", f"{FLOW}:big_result")
    assert result.returncode == 0, result.stdout + result.stderr + estate.logs()
    run_id = estate.client().list_runs(limit=1, flow_name="big_result")[0].flow_run_id
    [step] = estate.client().get_run(run_id).steps
    ref = ResultRef.from_json(step.result_ref_json)
    assert (ref.environment, ref.store) == ("site", "scratch")
    path = Path(ref.uri.removeprefix("file://"))
    assert path.is_file() and path.resolve().is_relative_to(scratch.resolve())
    return run_id, path


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def gc(estate: Estate, *args: str) -> dict:
    result = estate.cli("results", "gc", "--json", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    document: dict = json.loads(result.stdout)
    return document


def test_deleting_a_run_removes_its_stored_result_at_the_site(
    estate: Estate, scratch: Path
) -> None:
    run_id, path = stored_run(estate, scratch)

    deleted = estate.cli("runs", "delete", run_id[:8], "--reason", "test clean-up")

    assert deleted.returncode == 0, deleted.stderr
    assert f"Deleted run {run_id}; 1 stored result object(s) queued" in deleted.stdout
    estate.wait_until(lambda: not path.exists(), "the agent to delete the run's object")
    shown = estate.cli("runs", "show", run_id)
    assert shown.returncode != 0 and "does not exist" in shown.stderr
    audit = json.loads(estate.cli("audit", "list", "--json", check=True).stdout)
    [record] = [r for r in audit if r["action"] == "run.deleted"]
    assert record["subject"] == run_id
    assert (record["details"]["reason"], record["details"]["objects_queued"]) == (
        "test clean-up",
        1,
    )


def test_an_unfinished_run_is_refused_until_it_ends(estate: Estate) -> None:
    runner = estate.run_background(FLOW, "waiting")
    try:
        run_id = estate.latest_run_id("waiting")
        estate.wait_for_state(run_id, {"PAUSED"})
        refused = estate.cli("runs", "delete", run_id)
        assert refused.returncode != 0
        assert "is PAUSED: only a finished run" in refused.stderr
        estate.cli("runs", "cancel", run_id, "--wait", "30", check=True)
        deleted = estate.cli("runs", "delete", run_id, check=True)
        assert deleted.stdout.strip() == f"Deleted run {run_id}"
    finally:
        runner.kill()
        runner.wait()


def test_gc_reports_orphans_on_a_dry_run_and_removes_them_otherwise(
    estate: Estate, scratch: Path
) -> None:
    _, kept = stored_run(estate, scratch)
    orphan = scratch / "runs" / str(uuid.uuid4()) / "lost~231" / "a1" / "result"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"left behind by a deleted run")
    young = orphan.parent.parent / "a2" / "result"
    young.parent.mkdir()
    young.write_bytes(b"an upload that may still be in flight")
    for path in (orphan, kept):
        age(path, TWO_HOURS)

    dry = gc(estate, "--dry-run")

    [sweep] = [s for s in dry["sweeps"] if s["store"] == "scratch"]
    assert (sweep["environment"], sweep["objects"], sweep["orphans"], sweep["deleted"]) == (
        "site",
        2,
        1,
        0,
    )
    assert sweep["orphan_bytes"] == len(b"left behind by a deleted run")
    assert orphan.exists() and kept.exists() and young.exists()

    removed = gc(estate, "--environment", "site")

    [sweep] = [s for s in removed["sweeps"] if s["store"] == "scratch"]
    assert (sweep["orphans"], sweep["deleted"], sweep["errors"]) == (1, 1, [])
    assert not orphan.exists()
    assert kept.exists() and young.exists()  # referred to by its run; too young
    age(young, 10)
    text = estate.cli("results", "gc", "--dry-run", "--older-than", "5s")
    assert text.returncode == 0, text.stderr
    assert "Dry run: 1 orphan(s)" in text.stdout  # now the young one is old enough
    audit = json.loads(estate.cli("audit", "list", "--json", check=True).stdout)
    collected = [r for r in audit if r["action"] == "results.collected"]
    assert [r["details"]["dry_run"] for r in collected][-3:] == [True, False, True]


def test_gc_names_environments_it_could_not_sweep(estate: Estate) -> None:
    lonely = gc(estate, "--dry-run", "--environment", "nowhere")
    assert lonely["sweeps"] == []
    assert lonely["skipped"] == ["nowhere: no agent of this environment is connected"]
