"""``meridian dev``: finding the example, and the whole demo when every component exists."""

from __future__ import annotations

from pathlib import Path

from meridian.cli import dev

REPO = Path(__file__).resolve().parents[3]


def test_find_example_in_the_source_tree() -> None:
    assert dev.find_example() == REPO / "examples" / "cross_cloud_etl.py"


def test_missing_example_is_a_clear_error(cli, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(dev, "EXAMPLE", Path("examples") / "nope.py")
    monkeypatch.chdir(tmp_path)
    result = cli("dev")
    assert result.code == 1
    assert result.err.startswith("error: cannot find examples/nope.py")
    assert len(result.err.splitlines()) == 1


def test_example_runs_in_process_without_meridian() -> None:
    # Outside a flow run, steps are plain calls: the example is unit-testable as-is.
    import importlib.util

    spec = importlib.util.spec_from_file_location("cross_cloud_etl", dev.find_example())
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    report = module.cross_cloud_etl("2024-06-01")
    assert report["rows_written"] == 3 and report["table"] == "sales_daily"


def test_dev_demo_end_to_end(cli, tmp_path: Path) -> None:
    result = cli("dev", "--data-dir", str(tmp_path / "demo"))
    assert result.code == 0, result.err + result.out
    out = result.out
    assert "finished: COMPLETED" in out
    for environment in ("aws-demo", "gcp-demo", "onprem-demo"):
        assert environment in out
    recovered = out.split("Recovered failures:")[1].split("Failure that ended the run:")[0]
    assert "load#1 attempt 1" in recovered and "ConnectionResetError" in recovered
    assert out.split("Failure that ended the run:")[1].split()[0] == "none"
    # The example also runs as a deployment: its first scheduled run, on a hosted runner.
    assert "Deployment  demo-etl (version" in out and "every 3 s" in out
    scheduled = out.split("Scheduled run ")[1]
    assert scheduled.split("\n")[0].endswith("finished: COMPLETED")
