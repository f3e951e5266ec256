"""``@flow(concurrency="db")`` with real processes: with ``meridian limits set db 1`` a second
run of the flow waits PENDING — saying it waits for limit 'db', in ``runs show`` and in its
runner's output — until the first ends; the two are never RUNNING together."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import FLOWS, Estate
from tests.support.deadlines import DEADLINE_S

FLOW_FILE = FLOWS / "flow_limit_flows.py"


@pytest.fixture
def estate(tmp_path: Path) -> Iterator[Estate]:
    with Estate(tmp_path / "estate", heartbeat_s=0.5) as e:
        e.add_agent("worker", {"role": "worker"}, capacity=4)
        yield e


def test_a_flow_limit_of_one_runs_the_second_run_after_the_first(
    estate: Estate, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    estate.cli("limits", "set", "db", "1", check=True)
    client = estate.client()
    first_runner = estate.cli_background("run", f"{FLOW_FILE}:guarded", "-p", f"work={work}",
                                         "-p", "tag=a")  # fmt: skip
    first = estate.latest_run_id("guarded")
    estate.wait_for_state(first, {"RUNNING"})
    second_runner = estate.cli_background("run", f"{FLOW_FILE}:guarded", "-p", f"work={work}",
                                          "-p", "tag=b")  # fmt: skip

    def second_run() -> bool:
        return any(r.flow_run_id != first for r in client.list_runs(flow_name="guarded"))

    estate.wait_until(second_run, "the second run to be created")
    (second,) = [
        r.flow_run_id for r in client.list_runs(flow_name="guarded") if r.flow_run_id != first
    ]
    waiting = client.get_run(second)
    assert waiting.state == "PENDING", waiting
    assert "concurrency limit 'db'" in waiting.waiting_for and "1st in line" in waiting.waiting_for
    assert client.get_run(first).state == "RUNNING"
    shown = estate.cli("runs", "show", second, check=True).stdout
    assert "Waiting     waiting for concurrency limit 'db'" in shown
    (holder,) = [m for m in client.list_limits() if m.name == "db"]
    assert holder.holders == (f"run {first}",) and holder.waiting == 1

    (work / "go-a").touch()
    assert estate.wait_for_state(first, {"COMPLETED", "FAILED"}) == "COMPLETED", estate.logs()
    estate.wait_for_state(second, {"RUNNING", "COMPLETED", "FAILED"})
    (work / "go-b").touch()
    assert estate.wait_for_state(second, {"COMPLETED", "FAILED"}) == "COMPLETED", estate.logs()
    a, b = client.get_run(first), client.get_run(second)
    assert a.ended_at is not None and b.started_at is not None
    assert a.ended_at <= b.started_at  # never both RUNNING
    assert first_runner.wait(timeout=DEADLINE_S) == 0
    assert second_runner.wait(timeout=DEADLINE_S) == 0
    log = estate.cli_log(second_runner)
    assert log is not None and "is PENDING, waiting for concurrency limit 'db'" in log.read_text()
    (db,) = [m for m in client.list_limits() if m.name == "db"]
    assert db.holders == () and db.waiting == 0  # released when the runs ended
