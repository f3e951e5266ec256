from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.harness import Estate


@pytest.fixture(scope="module")
def estate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Estate]:
    """A control plane and three agents (aws-demo, gcp-demo, onprem-demo) as real processes,
    shared by the tests of one module (each test runs its own flow run)."""
    e = Estate(tmp_path_factory.mktemp("estate")).start()
    try:
        e.add_agent("aws-demo", {"cloud": "aws", "region": "us-east-1"})
        e.add_agent("gcp-demo", {"cloud": "gcp", "region": "europe-west1"})
        e.add_agent("onprem-demo", {"site": "dc1"})
        yield e
    except BaseException:
        print(e.logs())
        raise
    finally:
        e.stop()
