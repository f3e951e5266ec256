"""``meridian transfers`` with a fake client, and the "crossed environments" lines of
``runs show``, built from hand-made models. The command against a real control plane and
agents is in tests/integration/test_transfers.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from meridian import models
from meridian.cli import render
from meridian.cli import transfers as transfers_cmd
from meridian.cli.common import UsageError

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
MiB = 1024 * 1024


def transfer(step: str, source: str, target: str, size: int, state: str = "COMPLETED"):
    return models.TransferInfo(
        transfer_id=f"t-{step}-{state}",
        flow_run_id="0123456789abcdef",
        step_key=step,
        from_environment=source,
        to_environment=target,
        store="s3-main",
        bytes=size,
        sha256="ab" * 32,
        state=state,
        error="" if state == "COMPLETED" else "agent aws-1 did not start sending",
        started_at=NOW,
        ended_at=NOW + timedelta(seconds=3),
    )


LISTING = models.TransferListing(
    transfers=(
        transfer("load#1", "aws", "gcp", 300 * MiB),
        transfer("load#2", "aws", "gcp", 0, "FAILED"),
    ),
    totals=(
        models.TransferTotal("aws", "gcp", 300 * MiB, 1),
        models.TransferTotal("aws", "", 2048, 2),
    ),
)


class FakeClient:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def list_transfers(self, **kw: Any) -> models.TransferListing:
        self.calls.append(kw)
        return LISTING


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeClient:
    client = FakeClient()
    monkeypatch.setattr(transfers_cmd, "connect", lambda args: client)
    return client


def test_totals_per_pair_by_default(cli, fake: FakeClient) -> None:
    result = cli("transfers", "--since", "7d")
    assert result.code == 0, result.err
    [call] = fake.calls
    assert call["flow_run_id"] == "" and call["limit"] == 1
    assert abs(datetime.now(UTC) - timedelta(days=7) - call["since"]) < timedelta(minutes=1)
    lines = result.out.strip().splitlines()
    assert lines[0].startswith("Bytes that crossed environments since ")
    assert lines[1].split() == ["FROM", "TO", "BYTES", "TRANSFERS"]
    assert lines[2].split() == ["aws", "gcp", "300.0", "MiB", "1"]
    assert lines[3].split() == ["aws", "(client)", "2.0", "KiB", "2"]
    assert "load#1" not in result.out


def test_list_adds_each_transfer(cli, fake: FakeClient) -> None:
    result = cli("transfers", "--list", "--run", "0123", "--limit", "5")
    assert result.code == 0, result.err
    assert fake.calls == [{"since": None, "flow_run_id": "0123", "limit": 5}]
    rows = [line for line in result.out.splitlines() if "load#" in line]
    assert rows[0].split()[3:] == [
        "01234567",
        "load#1",
        "aws",
        "gcp",
        "s3-main",
        "300.0",
        "MiB",
        "relay",
        "COMPLETED",
    ]
    assert "FAILED" in rows[1] and "did not start sending" in rows[1]


def test_json(cli, fake: FakeClient) -> None:
    result = cli("transfers", "--list", "--json", "--since", "2026-02-01")
    document = json.loads(result.out)
    assert document["since"].startswith("2026-02-01T00:00:00")
    assert document["totals"][0] == {
        "from_environment": "aws",
        "to_environment": "gcp",
        "bytes": 300 * MiB,
        "transfers": 1,
    }
    assert document["transfers"][1]["state"] == "FAILED"


def test_since_takes_ages_and_dates_and_refuses_the_rest() -> None:
    assert transfers_cmd.parse_since("12h", NOW) == NOW - timedelta(hours=12)
    assert transfers_cmd.parse_since("30m", NOW) == NOW - timedelta(minutes=30)
    assert transfers_cmd.parse_since("2w", NOW) == NOW - timedelta(weeks=2)
    assert transfers_cmd.parse_since("2026-01-31") == datetime(2026, 1, 31, tzinfo=UTC)
    with pytest.raises(UsageError, match="use an age such as 7d"):
        transfers_cmd.parse_since("last week")


def test_nothing_transferred_says_so(cli, monkeypatch: pytest.MonkeyPatch) -> None:
    class Empty(FakeClient):
        def list_transfers(self, **kw: Any) -> models.TransferListing:
            return models.TransferListing()

    monkeypatch.setattr(transfers_cmd, "connect", lambda args: Empty())
    assert cli("transfers").out.strip() == "No completed transfers between environments."


def test_runs_show_lists_the_bytes_that_crossed_per_step() -> None:
    detail = models.RunDetail(
        flow_run_id="0123456789abcdef",
        flow_name="etl",
        entrypoint="flows.py:etl",
        trigger="manual",
        parameters_json="{}",
        bundle_sha256="b" * 64,
        state="COMPLETED",
        transfers=(
            transfer("load#1", "aws", "gcp", 300 * MiB),
            transfer("load#1", "aws", "gcp", 0, "FAILED"),
            transfer("", "aws", "", 2048),
        ),
    )
    text = render.render_run(detail)
    section = text[text.index("Crossed environments") :].splitlines()
    assert section[1].split() == [
        "(download):",
        "aws",
        "->",
        "(client)",
        "2.0",
        "KiB",
        "in",
        "1",
        "transfer",
    ]
    assert section[2].split() == [
        "load#1:",
        "aws",
        "->",
        "gcp",
        "300.0",
        "MiB",
        "in",
        "1",
        "transfer,",
        "1",
        "failed",
    ]
    document = render.run_to_dict(detail)
    assert [t["state"] for t in document["transfers"]] == ["COMPLETED", "FAILED", "COMPLETED"]


def test_runs_show_without_transfers_has_no_such_section() -> None:
    detail = models.RunDetail("r", "etl", "flows.py:etl", "manual", "{}", "b" * 64, "COMPLETED")
    assert "Crossed environments" not in render.render_run(detail)
