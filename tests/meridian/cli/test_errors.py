"""Every failure is one ``error: ...`` line with the right exit code; no tracebacks."""

from __future__ import annotations

from pathlib import Path

import pytest

from meridian.cli import main as main_module
from meridian.cli import runs
from meridian.core.errors import ConnectionFailed, NotFound, ValidationError


def assert_one_error_line(err: str, contains: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert contains in lines[0], err
    assert "Traceback" not in err


def test_help_exits_zero(cli) -> None:
    result = cli("--help")
    assert result.code == 0
    assert "runs" in result.out and "dev" in result.out


def test_no_command_is_a_usage_error(cli) -> None:
    result = cli()
    assert result.code == 2
    assert_one_error_line(result.err, "COMMAND")


def test_unknown_command(cli) -> None:
    result = cli("frobnicate")
    assert result.code == 2
    assert_one_error_line(result.err, "invalid choice")


@pytest.mark.parametrize(
    ("argv", "contains"),
    [
        (["server"], "ACTION"),
        (["server", "start", "--listen", "nope"], "invalid address"),
        (["tokens", "create"], "--environment"),
        (["tokens", "create", "--environment", "x", "--ttl", "-1"], "positive"),
        (["agent", "enroll", "--token", "t"], "no CA certificate"),
        (["agent", "start"], "--environment"),
        (["agent", "start", "--environment", "e", "--label", "cloud"], "invalid label"),
        (["agent", "start", "--environment", "e", "--label=-bad=x"], "invalid label"),
        (["agent", "start", "--environment", "e", "--label", "k=bad value"], "invalid label"),
        (["agent", "start", "--environment", "e", "--label", "Bad.Prefix/k=v"], "prefix"),
        (["agent", "start", "--environment", "e", "--capacity", "0"], ">= 1"),
        (["run"], "FILE:FLOW"),
        (["run", "flows.py"], "invalid entrypoint"),
        (["run", "missing.py:f"], "flow file not found"),
        (["runs", "list", "--limit", "many"], "whole number"),
        (["runs", "show"], "RUN"),
        (["runs", "logs"], "RUN"),
        (["agents"], "ACTION"),
        (["runs", "list", "--control-plane", "no-port"], "invalid address"),
        (["runs", "list", "--control-plane", "h:99999"], "invalid address"),
    ],
)
def test_usage_errors(cli, argv: list[str], contains: str) -> None:
    result = cli(*argv)
    assert result.code == 2, result
    assert_one_error_line(result.err, contains)


@pytest.mark.parametrize("bad", ["novalue", "=x", "1x=2", "a-b=c"])
def test_bad_run_parameters(cli, tmp_path: Path, bad: str) -> None:
    flows = tmp_path / "flows.py"
    flows.write_text("")
    result = cli("run", f"{flows}:f", "-p", bad)
    assert result.code == 2
    assert_one_error_line(result.err, "invalid parameter")


def test_duplicate_run_parameter(cli, tmp_path: Path) -> None:
    flows = tmp_path / "flows.py"
    flows.write_text("")
    result = cli("run", f"{flows}:f", "-p", "a=1", "-p", "a=2")
    assert result.code == 2
    assert_one_error_line(result.err, "more than once")


@pytest.mark.parametrize(
    "argv",
    [
        ["runs", "list"],
        ["runs", "show", "abc"],
        ["runs", "logs", "abc"],
        ["agents", "list"],
    ],
)
def test_client_commands_need_a_ca_file(cli, argv: list[str]) -> None:
    result = cli(*argv)
    assert result.code == 2
    assert_one_error_line(result.err, "MERIDIAN_CA_FILE")


def test_missing_ca_file(cli, tmp_path: Path) -> None:
    result = cli("runs", "list", "--ca-file", str(tmp_path / "nope.crt"))
    assert result.code == 1
    assert_one_error_line(result.err, "CA file not found")


def test_ca_file_from_environment(cli, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MERIDIAN_CA_FILE", str(tmp_path / "env.crt"))
    result = cli("agents", "list")
    assert_one_error_line(result.err, "env.crt")


@pytest.mark.parametrize("argv", [["runs", "list"], ["agents", "list"], ["runs", "show", "x"]])
def test_unreachable_control_plane(cli, ca_file: Path, closed_port: int, argv) -> None:
    address = f"127.0.0.1:{closed_port}"
    result = cli(*argv, "--control-plane", address, "--ca-file", str(ca_file))
    assert result.code == 1
    assert_one_error_line(result.err, "error: cannot reach")
    assert address in result.err


def test_control_plane_from_environment(cli, monkeypatch, ca_file, closed_port) -> None:
    monkeypatch.setenv("MERIDIAN_CONTROL_PLANE", f"127.0.0.1:{closed_port}")
    monkeypatch.setenv("MERIDIAN_CA_FILE", str(ca_file))
    result = cli("runs", "list")
    assert result.code == 1
    assert_one_error_line(result.err, f"127.0.0.1:{closed_port}")


class RaisingClient:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __enter__(self) -> RaisingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def get_run(self, run_id: str) -> None:
        raise self.exc


@pytest.mark.parametrize(
    ("exc", "contains"),
    [
        (NotFound("no run matches 'abc'"), "no run matches 'abc'"),
        (ValidationError("bad\nthing"), "bad thing"),
        (ConnectionFailed("TLS broke"), "cannot reach 127.0.0.1:7443: TLS broke"),
        (KeyboardInterrupt(), "interrupted"),
        (RuntimeError("boom"), "unexpected RuntimeError: boom"),
    ],
)
def test_errors_become_one_line(cli, monkeypatch, exc, contains) -> None:
    monkeypatch.setattr(runs, "connect", lambda args: RaisingClient(exc))
    result = cli("runs", "show", "abc")
    assert result.code == 1
    assert_one_error_line(result.err, contains)


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_traceback(cli, monkeypatch, where: str) -> None:
    monkeypatch.setattr(runs, "connect", lambda args: RaisingClient(RuntimeError("boom")))
    command = ["runs", "show", "x"]
    argv = ["--debug", *command] if where == "before" else [*command, "--debug"]
    result = cli(*argv)
    assert result.code == 1
    assert "Traceback" in result.err
    assert result.err.strip().splitlines()[-1].startswith("error: unexpected RuntimeError")


def test_main_uses_sys_argv_when_none(monkeypatch, capsys) -> None:
    monkeypatch.setattr("sys.argv", ["meridian", "--help"])
    assert main_module.main() == 0


def test_a_reader_that_stops_reading_is_not_an_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class ClosedPipe:
        """stdout once ``| head`` has exited: every write fails."""

        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self) -> None:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("sys.stdout", ClosedPipe())
    code = main_module.main(["completion", "bash"])
    assert code == main_module.EXIT_BROKEN_PIPE
    assert capsys.readouterr().err == ""
