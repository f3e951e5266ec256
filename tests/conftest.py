"""Fixtures and hooks shared by the whole suite: no developer profiles, a database URL for
store tests (SQLite, and PostgreSQL when configured or found on 127.0.0.1:5432; see
``tests/support/databases.py``), and a closing summary of the capability groups that were
skipped and the command that enables each."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.databases import (
    DATABASES,
    POSTGRES_ENV,
    POSTGRES_SKIP_PREFIX,
    discover_postgres,
    postgres_database,
    postgres_server,
    sqlite_url,
)

# Capability groups: a skip belongs to the first group whose pattern its reason matches (the
# skip reasons of each group share these words: tests/support/databases.py,
# tests/providers/slurm_cluster.py, tests/providers/ray, tests/browser/conftest.py).
CAPABILITIES: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("PostgreSQL", re.compile(re.escape(POSTGRES_SKIP_PREFIX)),
     f"start PostgreSQL on 127.0.0.1:5432 (found by itself) or export "
     f"{POSTGRES_ENV}=postgresql://USER@HOST:5432/DB"),
    ("Slurm", re.compile(r"slurm", re.I),
     "sudo .ci/slurm-setup.sh, then run pytest as root (the test cluster's daemons run as root)"),
    ("Ray", re.compile(r"\bray\b", re.I), "pip install -e '.[dev,ray]'"),
    ("browser", re.compile(r"chromium|playwright", re.I),
     "sudo .ci/browser-setup.sh && pip install -e '.[dev]'"),
)  # fmt: skip


def pytest_configure(config: pytest.Config) -> None:
    """Find a local PostgreSQL before anything reads the variable (as .ci/run does)."""
    discover_postgres()


def skipped_capabilities(reasons: list[str]) -> list[tuple[str, int, str]]:
    """(group, number of skipped tests, command that enables it) for each group skipped."""
    counts: Counter[str] = Counter()
    for reason in reasons:
        for name, pattern, _ in CAPABILITIES:
            if pattern.search(reason):
                counts[name] += 1
                break
    return [(name, counts[name], how) for name, _, how in CAPABILITIES if counts[name]]


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    reasons: list[str] = []
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = getattr(report, "longrepr", None)
        if isinstance(longrepr, tuple) and len(longrepr) == 3:
            reasons.append(str(longrepr[2]))
    groups = skipped_capabilities(reasons)
    if not groups:
        return
    terminalreporter.section("skipped capability groups")
    for name, count, how in groups:
        terminalreporter.write_line(f"{name}: {count} skipped; enable with: {how}")


@pytest.fixture(autouse=True)
def _no_saved_profiles(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tests never read (or write) the developer's own ~/.config/meridian profiles."""
    monkeypatch.setenv("MERIDIAN_CONFIG_DIR", str(tmp_path_factory.mktemp("meridian-config")))
    monkeypatch.delenv("MERIDIAN_TOKEN", raising=False)


@pytest.fixture(params=DATABASES)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Every store test runs on SQLite, and on PostgreSQL when MERIDIAN_TEST_POSTGRES_URL is set."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path)
        return
    yield from postgres_database(postgres_server("store tests"))
