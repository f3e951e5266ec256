"""``meridian results get`` against a fake control plane on real gRPC: stored results are
downloaded (digest checked) or printed when small JSON; inline ones are printed as stored."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from meridian.cli.profiles import ENV_CONFIG_DIR
from tests.meridian.cli.conftest import CliResult
from tests.meridian.result_server import ResultServer, StoredResult, serve_results
from tests.support.tls import make_tls


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ResultServer]:
    monkeypatch.setenv(ENV_CONFIG_DIR, str(tmp_path / "no-profiles"))
    with serve_results(make_tls(), tmp_path) as server:
        yield server


def _get(cli: Callable[..., CliResult], served: ResultServer, *args: str) -> CliResult:
    flags = ("--control-plane", served.address, "--ca-file", str(served.ca_file))
    return cli("results", "get", *args, *flags)


def test_a_stored_result_is_written_to_a_file(
    cli: Callable[..., CliResult], served: ResultServer, tmp_path: Path
) -> None:
    data = os.urandom(50_000)
    served.fake.stored["extract#1"] = StoredResult(data, "parquet")
    out = tmp_path / "extract.parquet"
    result = _get(cli, served, "run-12", "extract#1", "-o", str(out))
    assert result.code == 0, result.err
    assert out.read_bytes() == data
    assert f"wrote 50000 bytes (parquet, sha256 {hashlib.sha256(data).hexdigest()})" in result.err
    # The run prefix was resolved to the full id before the download.
    assert served.fake.requests == [("run-123456", "extract#1", 0)]


def test_a_small_stored_json_result_is_printed(
    cli: Callable[..., CliResult], served: ResultServer
) -> None:
    served.fake.stored["count#1"] = StoredResult(b'{"rows": 3}')
    result = _get(cli, served, "run-123456", "count#1")
    assert (result.code, result.out) == (0, '{"rows": 3}\n')


def test_a_large_or_binary_stored_result_needs_a_file(
    cli: Callable[..., CliResult], served: ResultServer
) -> None:
    served.fake.stored["frame#1"] = StoredResult(b"PAR1...", "parquet")
    result = _get(cli, served, "run-123456", "frame#1")
    assert result.code == 1 and "-o FILE" in result.err and "parquet" in result.err
    assert served.fake.requests == []  # refused before downloading anything


def test_an_inline_result_is_printed_or_written(
    cli: Callable[..., CliResult], served: ResultServer, tmp_path: Path
) -> None:
    served.fake.inline["small#1"] = '{"n": 1}'
    assert _get(cli, served, "run-123456", "small#1").out == '{"n": 1}\n'
    out = tmp_path / "small.json"
    assert _get(cli, served, "run-123456", "small#1", "-o", str(out)).code == 0
    assert out.read_text() == '{"n": 1}'


def test_unknown_steps_and_steps_without_a_result_say_so(
    cli: Callable[..., CliResult], served: ResultServer
) -> None:
    served.fake.inline["small#1"] = "1"
    missing = _get(cli, served, "run-123456", "nope#1")
    assert missing.code == 1 and "has no step 'nope#1'" in missing.err and "small#1" in missing.err
    failed = _get(cli, served, "run-123456", "failed#1")
    assert failed.code == 1 and "has no result: it is FAILED" in failed.err


def test_a_corrupted_download_fails_and_leaves_no_file(
    cli: Callable[..., CliResult], served: ResultServer, tmp_path: Path
) -> None:
    served.fake.stored["extract#1"] = StoredResult(os.urandom(5000), "parquet")
    served.fake.corrupt = True
    out = tmp_path / "x.parquet"
    result = _get(cli, served, "run-123456", "extract#1", "-o", str(out))
    assert result.code == 1 and "sha256" in result.err
    assert not out.exists()


def test_the_help_lists_results_as_a_network_command(cli: Callable[..., CliResult]) -> None:
    result = cli("--help")
    assert result.code == 0
    line = next(line for line in result.out.splitlines() if line.strip().startswith("results"))
    assert "[network]" in line
