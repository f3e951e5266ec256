"""Fixtures for CLI tests: a runner that captures output, a CA file, a closed port."""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from meridian.cli.common import ENV_CA_FILE, ENV_CONTROL_PLANE
from meridian.cli.main import main
from tests.support.tls import TestPKI


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The developer's shell must not leak into the defaults under test.
    monkeypatch.delenv(ENV_CONTROL_PLANE, raising=False)
    monkeypatch.delenv(ENV_CA_FILE, raising=False)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    def run(*argv: str) -> CliResult:
        code = main(list(argv))
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture(scope="session")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real CA certificate (PEM), so the client accepts the file."""
    path = tmp_path_factory.mktemp("ca") / "ca.crt"
    path.write_bytes(TestPKI().ca_pem)
    return path


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (bound then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
