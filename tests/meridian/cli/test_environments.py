"""``meridian environments list|residency`` against a real control plane (SQLite and
PostgreSQL), and how ``runs show`` presents a result that stayed at its site."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from control_plane import ServerConfig, create_api_token
from meridian import models
from meridian.cli.render import render_run, run_to_dict
from meridian.core.resultref import ResultRef
from tests.support.databases import DATABASES, postgres_database, postgres_server
from tests.support.plane import ThreadedControlPlane

RULE = "region in (eu-west-1,europe-west1)"


@pytest.fixture(params=DATABASES)
def plane(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[ServerConfig, str]]:
    dbs: Iterator[str] | None = None
    db_url = None
    if request.param == "postgres":
        dbs = postgres_database(postgres_server("the environments CLI tests"))
        db_url = next(dbs)
    config = ServerConfig(
        data_dir=tmp_path / "server", listen="127.0.0.1:0", agent_listen="127.0.0.1:0",
        db_url=db_url,
    )  # fmt: skip
    server = ThreadedControlPlane(config)
    started = server.start()
    try:
        yield config, started.address
    finally:
        server.stop()
        if dbs is not None:
            next(dbs, None)


def client_flags(config: ServerConfig, address: str, role: str) -> list[str]:
    token = create_api_token(config.data_dir, role, db_url=config.db_url)
    ca = str(config.data_dir / "tls" / "ca.crt")
    return ["--control-plane", address, "--ca-file", ca, "--token", token]


def test_admins_set_and_clear_rules_and_everyone_lists_them(
    cli, plane: tuple[ServerConfig, str]
) -> None:
    config, address = plane
    admin = client_flags(config, address, "admin")
    viewer = client_flags(config, address, "viewer")
    assert cli("environments", "list", *viewer).out.strip().startswith("no environments yet")

    result = cli("environments", "residency", "aws-eu", RULE, "--reason", "gdpr", *admin)
    assert result.code == 0, result.err
    assert f"environment aws-eu: results may only be read where '{RULE}' matches" in result.out
    listed = cli("environments", "list", *viewer)
    header, row = listed.out.strip().splitlines()
    assert header.split() == ["ENVIRONMENT", "RESIDENCY", "AGENTS", "CONNECTED", "RESULT", "STORES"]
    assert row.split()[0] == "aws-eu" and RULE in row
    (doc,) = json.loads(cli("environments", "list", "--json", *viewer).out)
    assert doc == {
        "name": "aws-eu",
        "residency": RULE,
        "agents": 0,
        "connected": 0,
        "result_stores": [],
        "default_result_store": "",
        "residency_pinned_labels_only": False,
    }
    audit = json.loads(cli("audit", "list", "--json", *admin).out)
    (record,) = [r for r in audit if r["action"] == "environment.residency_set"]
    assert record["details"] == {"environment": "aws-eu", "rule": RULE, "previous": "",
                                 "pinned_labels_only": False,
                                 "previous_pinned_labels_only": False,
                                 "reason": "gdpr"}  # fmt: skip

    denied = cli("environments", "residency", "aws-eu", "--clear", *viewer)
    assert denied.code == 1 and "needs the admin role" in denied.err
    bad = cli("environments", "residency", "aws-eu", "region in (eu", *admin)
    assert bad.code == 1 and "residency rule of environment 'aws-eu'" in bad.err
    cleared = cli("environments", "residency", "aws-eu", "--clear", *admin)
    assert cleared.code == 0 and "environment aws-eu: no residency rule" in cleared.out
    assert json.loads(cli("environments", "list", "--json", *viewer).out) == []


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["aws-eu"], "give either a RULE or --clear"),
        (["aws-eu", "site=x", "--clear"], "give either a RULE or --clear"),
        (["aws-eu", "  "], "use --clear"),
    ],
)
def test_residency_needs_a_rule_or_clear(cli, argv: list[str], needle: str) -> None:
    result = cli("environments", "residency", *argv)
    assert result.code == 2 and needle in result.err


def test_runs_show_presents_a_stored_result_by_its_reference() -> None:
    ref = ResultRef(
        environment="aws",
        store="s3-main",
        uri="s3://acme/runs/r/extract/a/result",
        size=300 * 1024 * 1024,
        sha256="1a2b" + "0" * 60,
        serializer="parquet",
    )
    step = models.StepRunDetail(
        step_run_id="s1",
        key="extract#1",
        name="extract",
        state="COMPLETED",
        result_ref_json=ref.to_json(),
    )
    at = datetime(2026, 1, 1, tzinfo=UTC)
    detail = models.RunDetail(
        flow_run_id="r1", flow_name="etl", entrypoint="flows.py:etl", trigger="manual",
        parameters_json="{}", bundle_sha256="", state="COMPLETED", created_at=at,
        started_at=at, ended_at=at, result_json="", error=None, steps=(step,), events=(),
    )  # fmt: skip
    text = render_run(detail)
    assert (
        "  extract#1: result: 300.0 MiB stored in aws/s3-main (parquet, sha256 1a2b00000000…)"
        in text.splitlines()
    )
    assert run_to_dict(detail)["steps"][0]["result_ref"] == ref.to_value()
