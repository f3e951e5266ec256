from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.harness import Estate
from tests.support.databases import DATABASES, postgres_database, postgres_server

# The PostgreSQL variant of every integration module is a long scenario (a second estate of
# processes per module): it runs with ``pytest -m slow``. The store, use-case and API tests
# run on PostgreSQL in the default suite.
_ESTATE_DATABASES = [
    pytest.param(db, marks=pytest.mark.slow) if db == "postgres" else db for db in DATABASES
]


@pytest.fixture(scope="module", params=_ESTATE_DATABASES)
def estate_db(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """The control plane's database: SQLite in its data dir, and PostgreSQL when configured
    (``-m slow``)."""
    if request.param == "sqlite":
        yield None
        return
    yield from postgres_database(postgres_server("integration tests"))


@pytest.fixture(scope="module")
def estate(tmp_path_factory: pytest.TempPathFactory, estate_db: str | None) -> Iterator[Estate]:
    """A control plane and three agents (aws-demo, gcp-demo, onprem-demo) as real processes,
    shared by the tests of one module (each test runs its own flow run)."""
    with Estate(tmp_path_factory.mktemp("estate"), db_url=estate_db) as e:
        e.add_agent("aws-demo", {"cloud": "aws", "region": "us-east-1"})
        e.add_agent("gcp-demo", {"cloud": "gcp", "region": "europe-west1"})
        e.add_agent("onprem-demo", {"site": "dc1"})
        yield e
