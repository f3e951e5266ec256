"""``meridian audit list|export|verify``: output with a fake client, then against a real
control plane (SQLite and PostgreSQL) whose database is tampered with directly."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from control_plane import ServerConfig, create_api_token, create_join_token
from control_plane.audit import record_hash
from control_plane.audit._chain import canonical_json, parse_at
from meridian import models
from meridian.cli import audit as audit_cmd
from tests.support.databases import DATABASES, postgres_database, postgres_server
from tests.support.plane import ThreadedControlPlane

NOW = datetime(2026, 3, 1, 12, 0, 0, 250000, tzinfo=UTC)


def _record(n: int) -> models.AuditRecord:
    return models.AuditRecord(n, NOW + timedelta(seconds=n), "cli", "run.triggered", f"run-{n}",
                              '{"flow":"etl"}', "0" * 64, f"{n:064x}")  # fmt: skip


class FakeClient:
    def __init__(self, verification: models.AuditVerification) -> None:
        self.verification = verification
        self.calls: list[dict[str, Any]] = []

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def list_audit_records(self, **kw: Any) -> list[models.AuditRecord]:
        self.calls.append(kw)
        return [_record(1), _record(2)]

    def iter_audit_records(self, **kw: Any) -> Iterator[models.AuditRecord]:
        self.calls.append(kw)
        yield from (_record(1), _record(2), _record(3))

    def verify_audit(self) -> models.AuditVerification:
        return self.verification


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeClient:
    client = FakeClient(models.AuditVerification(True, 3, 3, "ab" * 32))
    monkeypatch.setattr(audit_cmd, "connect", lambda args: client)
    return client


def test_list_shows_the_newest_records_by_default(cli, fake: FakeClient) -> None:
    result = cli("audit", "list", "--limit", "2")
    assert result.code == 0
    assert fake.calls == [{"since": None, "limit": 2, "newest": True}]
    header, first, _ = result.out.strip().splitlines()
    assert header.split() == ["ID", "AT", "ACTOR", "ACTION", "SUBJECT", "DETAILS"]
    assert first.split()[:6] == ["1", "2026-03-01", "12:00:01", "cli", "run.triggered", "run-1"]


def test_list_since_and_json(cli, fake: FakeClient) -> None:
    result = cli("audit", "list", "--since", "2026-03-01T10:00:00", "--json")
    assert result.code == 0
    assert fake.calls[0]["since"] == datetime(2026, 3, 1, 10, tzinfo=UTC)
    assert fake.calls[0]["newest"] is False
    doc = json.loads(result.out)
    assert doc[0]["at"] == "2026-03-01T12:00:01.250000Z" and doc[0]["details"] == {"flow": "etl"}


def test_bad_since_is_a_usage_error(cli, fake: FakeClient) -> None:
    result = cli("audit", "list", "--since", "yesterday")
    assert result.code == 2 and "invalid time 'yesterday'" in result.err


def test_export_jsonl_to_stdout_and_file(cli, fake: FakeClient, tmp_path: Path) -> None:
    result = cli("audit", "export", "--since", "2026-03-01", "--format", "jsonl")
    lines = [json.loads(line) for line in result.out.splitlines()]
    assert result.code == 0 and [x["id"] for x in lines] == [1, 2, 3]
    target = tmp_path / "audit.jsonl"
    result = cli("audit", "export", "--output", str(target))
    assert result.code == 0 and "exported 3 audit record(s)" in result.err
    assert len(target.read_text().splitlines()) == 3
    assert not (tmp_path / "audit.jsonl.partial").exists()


def test_verify_exit_codes(cli, fake: FakeClient) -> None:
    result = cli("audit", "verify")
    assert result.code == 0
    assert result.out.splitlines() == [
        "audit log intact: 3 record(s)",
        f"head: record 3 {'ab' * 32}",
    ]
    fake.verification = models.AuditVerification(False, 1, 1, "cd" * 32, 2, "record 2 was altered")
    result = cli("audit", "verify")
    assert result.code == 1
    assert "NOT intact at record 2: record 2 was altered" in result.out
    result = cli("audit", "verify", "--json")
    assert result.code == 1 and json.loads(result.out)["first_bad_id"] == 2


# ---- against a real control plane ------------------------------------------------------------


@pytest.fixture(params=DATABASES)
def plane(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[ServerConfig, str]]:
    dbs: Iterator[str] | None = None
    db_url = None
    if request.param == "postgres":
        dbs = postgres_database(postgres_server("the audit CLI tests"))
        db_url = next(dbs)
    config = ServerConfig(data_dir=tmp_path / "server", listen="127.0.0.1:0",
                          agent_listen="127.0.0.1:0", db_url=db_url)  # fmt: skip
    server = ThreadedControlPlane(config)
    started = server.start()
    try:
        yield config, started.address
    finally:
        server.stop()
        if dbs is not None:
            next(dbs, None)


def _tamper(config: ServerConfig, statement: str) -> None:
    url = config.db_url or f"sqlite:///{config.data_dir / 'meridian.db'}"
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn:
        conn.execute(text(statement))
    engine.dispose()


def test_real_log_lists_exports_verifies_and_catches_tampering(
    cli, plane: tuple[ServerConfig, str], tmp_path: Path
) -> None:
    config, address = plane
    for environment in ("aws-prod", "gcp-prod", "onprem"):
        create_join_token(config.data_dir, environment, ttl_s=60, db_url=config.db_url)
    ca = str(config.data_dir / "tls" / "ca.crt")
    token = create_api_token(config.data_dir, "viewer", name="auditor", db_url=config.db_url)
    client = ["--control-plane", address, "--ca-file", ca, "--token", token]
    assert Path(ca).exists()

    listed = json.loads(cli("audit", "list", "--json", *client).out)
    assert [(r["id"], r["action"]) for r in listed] == [
        *[(i, "token.created") for i in (1, 2, 3)],
        (4, "api_token.created"),
    ]
    assert [r["details"]["environment"] for r in listed[:3]] == ["aws-prod", "gcp-prod", "onprem"]

    export = tmp_path / "audit.jsonl"
    assert cli("audit", "export", "--output", str(export), *client).code == 0
    prev = "0" * 64
    for line in export.read_text().splitlines():  # the export alone is enough to recheck hashes
        r = json.loads(line)
        assert r["prev_hash"] == prev
        assert r["hash"] == record_hash(
            record_id=r["id"], at=parse_at(r["at"]), actor=r["actor"], action=r["action"],
            subject=r["subject"], details=canonical_json(r["details"]), prev_hash=r["prev_hash"],
        )  # fmt: skip
        prev = r["hash"]

    ok = cli("audit", "verify", *client)
    assert ok.code == 0 and f"head: record 4 {prev}" in ok.out

    _tamper(config, """UPDATE audit_log SET details = '{"environment":"x"}' WHERE id = 2""")
    bad = cli("audit", "verify", *client)
    assert bad.code == 1 and "NOT intact at record 2" in bad.out
