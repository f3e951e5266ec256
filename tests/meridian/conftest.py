"""Fixtures shared by the SDK tests that drive a flow runner against the fake control plane
of ``test_client.py`` (a real gRPC server over TLS with scripted answers)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from meridian.client import ControlClient
from tests.meridian.test_client import FakeServer, serve_fake
from tests.support.deadlines import DEADLINE_S
from tests.support.tls import Tls, make_tls


@pytest.fixture(scope="module")
def tls_material() -> Tls:
    return make_tls()


@pytest.fixture
def fake_server(tls_material: Tls, tmp_path: Path) -> Iterator[FakeServer]:
    with serve_fake(tls_material, tmp_path) as served:
        yield served


@pytest.fixture
def client(fake_server: FakeServer) -> Iterator[ControlClient]:
    with ControlClient(fake_server.address, fake_server.ca_file, timeout_s=DEADLINE_S) as c:
        yield c
