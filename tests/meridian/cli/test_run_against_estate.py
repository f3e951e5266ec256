"""`meridian run`, `runs show` and `runs watch` against a real estate (a control plane and
three agents as processes, tests/integration/harness.py): the flow's result is printed, the
progress output of a non-terminal stays bounded, and a map's keys come out in natural order."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.integration.harness import FLOWS, Estate

pytestmark = pytest.mark.integration
FLOW_FILE = FLOWS / "estate_flows.py"
ITEMS = 12


@pytest.fixture(scope="module")
def estate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Estate]:
    with Estate(tmp_path_factory.mktemp("estate")) as e:
        e.add_agent("aws-demo", {"cloud": "aws", "region": "us-east-1"})
        e.add_agent("gcp-demo", {"cloud": "gcp", "region": "europe-west1"})
        e.add_agent("onprem-demo", {"site": "dc1"})
        yield e


def test_run_prints_the_result_in_bounded_output_and_show_orders_keys(estate: Estate) -> None:
    result = estate.cli("run", f"{FLOW_FILE}:fan_out", "-p", f"n={ITEMS}")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    squares = [i * i for i in range(ITEMS)]
    expected = {"aws": "first", "squares": squares, "total": sum(squares)}
    (printed,) = [line for line in lines if line.startswith("Result: ")]
    assert json.loads(printed.removeprefix("Result: ")) == expected
    # Not a terminal: summary lines, not one line per event (~9 events a step, 14 steps).
    assert len(lines) < 20, result.stdout
    assert any(f"{ITEMS + 2}/{ITEMS + 2} steps done" in line for line in lines), result.stdout
    run_id = lines[-1].split()[-1]

    shown = estate.cli("runs", "show", run_id, check=True).stdout
    assert f"Result      {json.dumps(expected, sort_keys=True)}" in shown
    timeline = shown.split("Timeline (times UTC)")[1].split("Steps:")[0]
    gcp = [line.split()[0] for line in timeline.splitlines() if line.startswith("on_gcp#")]
    assert gcp == [f"on_gcp#{i}" for i in range(1, ITEMS + 1)]

    watched = estate.cli("runs", "watch", run_id)
    assert watched.returncode == 0 and f"Run {run_id}: COMPLETED" in watched.stdout
