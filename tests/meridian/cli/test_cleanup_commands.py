"""`meridian runs delete` and `meridian results gc` with a fake client: what they ask the
control plane, what they print, their exit codes, and the --older-than ages they accept."""

from __future__ import annotations

import argparse
import json

import pytest

from meridian import models
from meridian.cli import results as results_cmd
from meridian.cli import runs as runs_cmd
from meridian.cli.main import build_parser

URI = "file:///r/runs/a/b/c/result"
SWEPT = models.CollectResult(
    sweeps=(
        models.StoreSweep("site", "scratch", 12, 3, 4096, 2, (f"{URI}: EACCES",)),
        models.StoreSweep("aws", "", 0, 0, 0, 0, ("agent a1 did not finish listing in time",)),
    ),
    skipped=("gcp: no agent of this environment is connected",),
)  # fmt: skip


class FakeClient:
    def __init__(self, collected: models.CollectResult = SWEPT) -> None:
        self.calls: list[tuple[str, object]] = []
        self.collected = collected

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def delete_run(self, run: str, reason: str = "") -> models.RunDeletion:
        self.calls.append(("delete_run", (run, reason)))
        return models.RunDeletion("run-1-full", 2)

    def collect_results(self, **options: object) -> models.CollectResult:
        self.calls.append(("collect_results", options))
        return self.collected


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_runs_delete_passes_the_reason_and_says_what_was_queued(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    client = FakeClient()
    monkeypatch.setattr(runs_cmd, "connect", lambda args: client)
    args = parse("runs", "delete", "run-1", "--reason", "GDPR request")
    assert args.func(args) == 0
    assert client.calls == [("delete_run", ("run-1", "GDPR request"))]
    assert capsys.readouterr().out == (
        "Deleted run run-1-full; 2 stored result object(s) queued for deletion at their sites\n"
    )


def test_gc_asks_for_a_dry_run_prints_the_table_and_fails_on_errors(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    client = FakeClient()
    monkeypatch.setattr(results_cmd, "connect", lambda args: client)
    args = parse("results", "gc", "--dry-run", "--environment", "site", "--older-than", "2h")
    assert args.func(args) == 1  # errors: a cron job notices
    assert client.calls == [
        ("collect_results", {"dry_run": True, "environment": "site", "older_than_s": 7200.0})
    ]
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["ENVIRONMENT", "STORE", "LISTED", "ORPHANS", "ORPHAN", "SIZE",
                              "DELETED"]  # fmt: skip
    assert out[1].split() == ["site", "scratch", "12", "3", "4.0", "KiB", "-"]
    assert out[2:] == [
        "error (site/scratch): file:///r/runs/a/b/c/result: EACCES",
        "error (aws): agent a1 did not finish listing in time",
        "skipped gcp: no agent of this environment is connected",
        "Dry run: 3 orphan(s), 4.0 KiB, would be removed; run without --dry-run to remove them",
    ]


def test_gc_json_and_a_clean_collection_exits_zero(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean = models.CollectResult(sweeps=(models.StoreSweep("site", "scratch", 4, 1, 10, 1),))
    client = FakeClient(clean)
    monkeypatch.setattr(results_cmd, "connect", lambda args: client)
    args = parse("results", "gc", "--json")
    assert args.func(args) == 0
    assert client.calls == [
        ("collect_results", {"dry_run": False, "environment": "", "older_than_s": 3600.0})
    ]
    document = json.loads(capsys.readouterr().out)
    assert document == {
        "dry_run": False,
        "sweeps": [
            {"environment": "site", "store": "scratch", "objects": 4, "orphans": 1,
             "orphan_bytes": 10, "deleted": 1, "errors": []}
        ],
        "skipped": [],
    }  # fmt: skip


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90.0), ("90s", 90.0), ("30m", 1800.0), ("1h", 3600.0), ("1.5d", 129600.0),
     ("2W", 1209600.0)],
)  # fmt: skip
def test_ages_accepted_by_older_than(text: str, seconds: float) -> None:
    assert results_cmd.parse_age(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "0", "-1h", "1y", "nan", "inf", "4000w"])
def test_ages_refused_by_older_than(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        results_cmd.parse_age(text)
