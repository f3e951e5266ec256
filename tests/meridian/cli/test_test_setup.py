"""What plain `pytest` does for a newcomer: finds a local PostgreSQL by itself and ends with
the capability groups it skipped and how to enable each (tests/conftest.py)."""

from __future__ import annotations

import socket

import pytest

from tests import conftest
from tests.support import databases


def test_skips_are_grouped_by_capability_with_the_command_to_enable_them() -> None:
    reasons = [
        f"{databases.POSTGRES_SKIP_PREFIX} to run store tests against PostgreSQL",
        f"{databases.POSTGRES_SKIP_PREFIX} to run these tests against PostgreSQL too",
        "sbatch, munged not found: install slurm-wlm and munge (.ci/slurm-setup.sh)",
        "install meridian-orchestrator[ray]",
        "/usr/bin/chromium is missing: run .ci/browser-setup.sh (installs Debian's chromium)",
        "no mount command: cannot create a small filesystem to fill",
    ]
    groups = {name: (count, how) for name, count, how in conftest.skipped_capabilities(reasons)}
    assert list(groups) == ["PostgreSQL", "Slurm", "Ray", "browser"]
    assert groups["PostgreSQL"][0] == 2 and databases.POSTGRES_ENV in groups["PostgreSQL"][1]
    assert groups["Slurm"][1].startswith("sudo .ci/slurm-setup.sh")
    assert groups["Ray"][1] == "pip install -e '.[dev,ray]'"
    assert "browser-setup.sh" in groups["browser"][1]


def test_a_local_postgres_is_found_by_a_tcp_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(databases.POSTGRES_ENV, raising=False)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setattr(databases, "LOCAL_POSTGRES", server.getsockname())
        assert databases.discover_postgres() == databases.LOCAL_POSTGRES_URL
    assert databases.os.environ[databases.POSTGRES_ENV] == databases.LOCAL_POSTGRES_URL


def test_no_server_no_url_and_a_configured_url_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(databases.POSTGRES_ENV, raising=False)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        monkeypatch.setattr(databases, "LOCAL_POSTGRES", closed.getsockname())
    assert databases.discover_postgres() is None
    monkeypatch.setenv(databases.POSTGRES_ENV, "postgresql://me@db:5432/x")
    assert databases.discover_postgres() == "postgresql://me@db:5432/x"
