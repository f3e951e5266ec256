"""``meridian results get`` against a fake control plane on real gRPC: stored results are
downloaded (digest checked) or printed when small JSON; inline ones are printed as stored."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from meridian.cli.main import main
from meridian.cli.profiles import ENV_CONFIG_DIR
from meridian.core import sealing
from meridian.core.sealedfile import seal_file
from meridian.core.sealing import KeyRing
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


def test_dash_writes_the_bytes_to_stdout(
    served: ResultServer, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    data = bytes(range(256)) * 40  # not text: must reach stdout unchanged
    served.fake.stored["frame#1"] = StoredResult(data, "bytes")
    flags = ("--control-plane", served.address, "--ca-file", str(served.ca_file))
    assert main(["results", "get", "run-123456", "frame#1", "-o", "-", *flags]) == 0
    captured = capsysbinary.readouterr()
    assert captured.out == data
    assert b"to stdout" in captured.err
    assert not Path("-").exists()


def test_a_missing_output_directory_is_named_before_downloading(
    cli: Callable[..., CliResult], served: ResultServer, tmp_path: Path
) -> None:
    served.fake.stored["extract#1"] = StoredResult(os.urandom(500), "parquet")
    missing = tmp_path / "nonexistent" / "dir"
    result = _get(cli, served, "run-123456", "extract#1", "-o", str(missing / "x.bin"))
    assert result.code == 1
    assert f"the directory {missing} does not exist" in result.err
    assert ".part" not in result.err and "unexpected" not in result.err
    assert served.fake.requests == []


def _sealed(served: ResultServer, tmp_path: Path, key: Path, plaintext: bytes) -> bytes:
    """Store ``plaintext`` sealed with key group eu-sites as step s#1; returns the ciphertext."""
    sealing.generate_key_file(key)
    ring = KeyRing.from_references({"eu-sites": f"file:{key}"})
    (tmp_path / "plain").write_bytes(plaintext)
    seal_file(ring, "eu-sites", tmp_path / "plain", tmp_path / "sealed", "run-123456", "s#1")
    ciphertext = (tmp_path / "sealed").read_bytes()
    served.fake.stored["s#1"] = StoredResult(ciphertext, "json", sealed=True)
    return ciphertext


def test_a_sealed_result_is_opened_with_the_clients_keys(
    cli: Callable[..., CliResult],
    served: ResultServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = tmp_path / "eu.key"
    _sealed(served, tmp_path, key, b'{"secret": 42}')
    monkeypatch.setenv(sealing.ENV_KEYS, f"eu-sites=file:{key}")
    out = tmp_path / "s.json"
    result = _get(cli, served, "run-123456", "s#1", "-o", str(out))
    assert result.code == 0, result.err
    assert out.read_bytes() == b'{"secret": 42}'
    assert "opened the sealed result with key group 'eu-sites'" in result.err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_sealed_result_without_its_key_is_written_as_ciphertext_and_said_so(
    cli: Callable[..., CliResult],
    served: ResultServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ciphertext = _sealed(served, tmp_path, tmp_path / "eu.key", b'{"secret": 42}')
    monkeypatch.delenv(sealing.ENV_KEYS, raising=False)
    out = tmp_path / "s.json"
    result = _get(cli, served, "run-123456", "s#1", "-o", str(out))
    assert result.code == 0, result.err
    assert out.read_bytes() == ciphertext
    assert "sealed with key group 'eu-sites': the file holds ciphertext" in result.err
    assert f"{sealing.ENV_KEYS}=eu-sites=file:" in result.err


def test_the_help_lists_results_as_a_network_command(cli: Callable[..., CliResult]) -> None:
    result = cli("--help")
    assert result.code == 0
    line = next(line for line in result.out.splitlines() if line.strip().startswith("results"))
    assert "[network]" in line
