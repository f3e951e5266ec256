"""A real estate for the browser tests (control plane with the web console, three agents) and
Playwright driving the system's headless Chromium; skipped when it is not installed."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import Estate, free_port

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} is missing: run .ci/browser-setup.sh (installs Debian's chromium)",
        allow_module_level=True,
    )
pytest.importorskip("playwright", reason="pip install -e '.[dev]' installs playwright")
# Playwright must never fetch a browser of its own: it drives /usr/bin/chromium only.
os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")


class ConsoleEstate(Estate):
    """An Estate whose control plane also serves the web console."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, heartbeat_s=1.0, lost_after_s=60.0)
        self.http_address = f"127.0.0.1:{free_port()}"

    @property
    def url(self) -> str:
        return f"https://{self.http_address}"

    def _server_args(self) -> list[str]:
        return [*super()._server_args(), "--http-listen", self.http_address]


# Module scope, not session: sync_playwright runs an event loop in this thread while it is
# open, and every later test that calls asyncio.run() would fail.
@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield chromium
        chromium.close()
