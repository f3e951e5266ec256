"""Subflows with real processes: a ``@flow(subflow=True)`` called in a flow body runs as a
child run linked to its parent (its result returned to the body, the parent listing it), and
a resumed parent reuses the child that completed instead of running it again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import Estate

FLOWS = Path(__file__).parent / "flows" / "subflow_flows.py"


@pytest.fixture
def estate(tmp_path: Path) -> Iterator[Estate]:
    with Estate(tmp_path / "estate", heartbeat_s=0.5) as e:
        e.add_agent("dc1", {"site": "dc1"}, capacity=2)
        yield e


def test_a_subflow_runs_as_a_linked_child_and_a_resumed_parent_reuses_it(
    estate: Estate, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    first = estate.cli("run", f"{FLOWS}:parent", "-p", "n=4", "-p", f"work={work}")
    assert first.returncode != 0, first.stdout  # the parent stops after its child
    run_id = estate.latest_run_id("parent")
    detail = estate.client().get_run(run_id)
    assert detail.state == "FAILED"
    (child,) = detail.children
    assert (child.flow_name, child.state, child.parent_run_id) == ("child", "COMPLETED", run_id)
    child_detail = estate.client().get_run(child.flow_run_id)
    assert child_detail.parent_key == "child#1" and child_detail.result_json == "9"
    assert [s.key for s in child_detail.steps] == ["double#1"]  # its steps are its own
    assert detail.steps == ()
    assert any(e.kind == "run.subflow" for e in detail.events)
    listed = {r.flow_run_id: r for r in estate.client().list_runs(limit=10)}
    assert listed[child.flow_run_id].parent_run_id == run_id
    shown = estate.cli("runs", "show", run_id, check=True).stdout
    assert "Subflows" in shown and child.flow_run_id in shown
    shown = estate.cli("runs", "show", child.flow_run_id, check=True).stdout
    assert f"Parent      {run_id} (subflow child#1)" in shown
    assert run_id[:8] in estate.cli("runs", "list", check=True).stdout  # the PARENT column

    for action in ("resume", "retry"):  # the child's body belongs to its parent's runner
        refused = estate.cli("runs", action, child.flow_run_id)
        assert refused.returncode != 0
        assert f"is a subflow of run {run_id}; {action} the parent run" in refused.stderr
    assert estate.client().get_run(child.flow_run_id).state == "COMPLETED"  # untouched

    (work / "go").touch()
    resumed = estate.cli("runs", "resume", run_id)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    detail = estate.client().get_run(run_id)
    assert detail.state == "COMPLETED" and detail.result_json == "90"
    assert [c.flow_run_id for c in detail.children] == [child.flow_run_id]  # the same child
    again = estate.client().get_run(child.flow_run_id)
    assert sum(e.kind == "run.running" for e in again.events) == 1  # not run again
    assert len(again.steps[0].attempts) == 1
