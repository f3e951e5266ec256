"""One in-process control plane per fuzz module, started once and stopped at the module's end."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fuzz import FuzzPlane, start_plane


@pytest.fixture(scope="module")
def fuzz_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzPlane]:
    server, plane = start_plane(tmp_path_factory.mktemp("fuzz-server"))
    try:
        yield plane
    finally:
        for close in reversed(plane.closers):
            close()
        plane.channel.close()
        server.stop()
