from __future__ import annotations

from tests.integration.conftest import estate  # noqa: F401 - reused by some fault tests
