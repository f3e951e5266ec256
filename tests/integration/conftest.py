from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import Estate


@pytest.fixture
def estate(tmp_path: Path) -> Iterator[Estate]:
    """A control plane and three agents (aws-demo, gcp-demo, onprem-demo) as real processes."""
    e = Estate(tmp_path).start()
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
