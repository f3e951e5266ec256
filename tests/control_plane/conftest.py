from __future__ import annotations

from collections.abc import Iterator

import pytest

from control_plane.store.db import Store
from tests.control_plane.usecases.helpers import make_store


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    """A migrated store with one bundle and two connected agents (aws a1, gcp g1)."""
    yield from make_store(db_url)
