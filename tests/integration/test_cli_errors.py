"""Errors and bad input, end to end: the real `meridian` CLI against a real control plane.

Every failure must be exactly one ``error: ...`` line on stderr (no traceback), a non-zero
exit code, and a message that names what to fix. One estate (a control plane process, no
agents: nothing here needs a step to run) serves the whole module; each test writes its own
flow directory so that bundles and runs do not mix.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from control_plane import ServerConfig, create_api_token
from control_plane.auth.ca import CertificateAuthority
from meridian.client import ControlClient
from meridian.core.errors import BundleError
from meridian.sdk.runner import run_flow
from tests.integration.harness import Estate, child_env, free_port, meridian_cmd
from tests.support.deadlines import DEADLINE_S
from tests.support.plane import ThreadedControlPlane

ENV = "errors-env"

FLOWS_SOURCE = """\
from meridian import flow, step


@step(target="cloud=aws")
def double(x: int) -> int:
    return 2 * x


@flow
def alpha(n: int, label: str = "x") -> int:
    return n


@flow
def beta() -> int:
    return 1
"""

BAD_SELECTOR_SOURCE = """\
from meridian import flow, step


@step(target="cloud=aws,region in (eu-west-1")
def unreachable(x: int) -> int:
    return x


@flow
def bad_selector_flow() -> int:
    return unreachable(1)
"""


# ---- helpers ------------------------------------------------------------------------------


def nonempty_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def error_line(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The single ``error:`` line of a failed command; checks exit code and no traceback."""
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in nonempty_lines(result.stderr) if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0], result.stderr
    return errors[0]


def assert_one_error_line(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Like ``error_line`` and, in addition, stderr holds nothing but that line."""
    line = error_line(result, *needles)
    assert nonempty_lines(result.stderr) == [line], result.stderr
    return line


def write_flows(directory: Path, source: str = FLOWS_SOURCE, name: str = "flows.py") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(source)
    return path


def new_token(estate: Estate, *extra: str) -> str:
    result = estate.cli(
        "tokens", "create", "--data-dir", str(estate.server_dir), "--environment", ENV, *extra
    )
    assert result.returncode == 0, result
    return result.stdout.strip().splitlines()[-1]


def enroll(
    estate: Estate, token: str, data_dir: Path, ca_file: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return estate.cli(
        "agent",
        "enroll",
        "--control-plane",
        estate.address,
        "--ca-file",
        str(ca_file or estate.ca_file),
        "--token",
        token,
        "--data-dir",
        str(data_dir),
        "--name",
        data_dir.name,
    )


def run_count(estate: Estate, flow_name: str) -> int:
    with estate.client() as client:
        return len(client.list_runs(flow_name=flow_name))


@pytest.fixture(scope="module")
def estate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Estate]:
    with Estate(tmp_path_factory.mktemp("errors-estate")) as e:
        yield e


@pytest.fixture(scope="module")
def flows_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_flows(tmp_path_factory.mktemp("flows"))


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CA certificate of a different, unrelated Meridian CA."""
    directory = tmp_path_factory.mktemp("other-ca")
    CertificateAuthority.load_or_create(directory)
    return directory / "ca.crt"


@pytest.fixture(scope="module")
def not_a_certificate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("junk") / "ca.crt"
    path.write_text("this is not a certificate\n")
    return path


@pytest.fixture(scope="module")
def enrolled_dir(estate: Estate, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An agent data directory enrolled in ENV (the agent itself is never started)."""
    data_dir = tmp_path_factory.mktemp("agents") / "enrolled"
    result = enroll(estate, new_token(estate), data_dir)
    assert result.returncode == 0, result
    return data_dir


# ---- flows and parameters -----------------------------------------------------------------


def test_unknown_flow_name_lists_the_flows_in_the_file(estate: Estate, flows_file: Path) -> None:
    result = estate.cli("run", f"{flows_file}:gamma")
    assert_one_error_line(result, "'gamma'", str(flows_file), "alpha", "beta")
    assert run_count(estate, "gamma") == 0


def test_unknown_flow_file(estate: Estate, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.py"
    result = estate.cli("run", f"{missing}:alpha")
    assert result.returncode == 2
    assert_one_error_line(result, "flow file not found", str(missing))


@pytest.mark.parametrize(
    ("params", "needles"),
    [
        (["n=1", "colour=red"], ("unknown parameter 'colour'", "n, label")),
        (["n=abc"], ("'n'", "integer", "'abc'")),
        (["n=1.5"], ("'n'", "integer")),
        ([], ("missing required parameter", "-p n=")),
    ],
    ids=["unknown-name", "not-an-int", "float-for-int", "missing-required"],
)
def test_bad_parameter_values(
    estate: Estate, flows_file: Path, params: list[str], needles: tuple[str, ...]
) -> None:
    before = run_count(estate, "alpha")
    args = ["run", f"{flows_file}:alpha"]
    for p in params:
        args += ["-p", p]
    result = estate.cli(*args)
    assert result.returncode == 1
    assert_one_error_line(result, *needles)
    assert run_count(estate, "alpha") == before  # refused before any run was created


@pytest.mark.parametrize("bad", ["n", "=1", "1n=1", "n-x=1"])
def test_malformed_parameter_is_a_usage_error(estate: Estate, flows_file: Path, bad: str) -> None:
    result = estate.cli("run", f"{flows_file}:alpha", "-p", bad)
    assert result.returncode == 2
    assert_one_error_line(result, "invalid parameter", repr(bad), "key=value")


def test_malformed_selector_fails_at_import_and_creates_no_run(
    estate: Estate, tmp_path: Path
) -> None:
    flows = write_flows(tmp_path / "badsel", BAD_SELECTOR_SOURCE)
    result = estate.cli("run", f"{flows}:bad_selector_flow")
    # Names the step and where it is defined, quotes the selector and where it goes wrong.
    assert_one_error_line(result, "'unreachable'", "flows:4", "region in (eu-west-1", "position")
    assert run_count(estate, "bad_selector_flow") == 0


# ---- reaching and trusting the control plane ----------------------------------------------


def test_unreachable_control_plane(estate: Estate, flows_file: Path) -> None:
    closed = f"127.0.0.1:{free_port()}"
    for args in (["runs", "list"], ["run", f"{flows_file}:alpha", "-p", "n=1"]):
        result = estate.cli(*args, "--control-plane", closed)
        assert result.returncode == 1
        assert_one_error_line(result, "cannot reach", closed, "--control-plane")


def test_enroll_against_an_unreachable_control_plane(estate: Estate, tmp_path: Path) -> None:
    closed = f"127.0.0.1:{free_port()}"
    result = estate.cli(
        "agent",
        "enroll",
        "--control-plane",
        closed,
        "--ca-file",
        str(estate.ca_file),
        "--token",
        new_token(estate),
        "--data-dir",
        str(tmp_path / "agent"),
    )
    assert_one_error_line(result, "cannot reach", closed)


CLIENT_COMMANDS = [["runs", "list"], ["agents", "list"], ["runs", "show", "abc"]]


@pytest.mark.parametrize("args", CLIENT_COMMANDS, ids=lambda a: "-".join(a[:2]))
def test_ca_file_of_another_ca_names_the_ca_file(
    estate: Estate, other_ca: Path, args: list[str]
) -> None:
    result = estate.cli(*args, "--ca-file", str(other_ca))
    assert result.returncode == 1
    assert_one_error_line(result, "cannot verify", str(other_ca), "--ca-file")


def test_ca_file_that_is_not_a_certificate(estate: Estate, not_a_certificate: Path) -> None:
    result = estate.cli("runs", "list", "--ca-file", str(not_a_certificate))
    assert result.returncode == 1
    assert_one_error_line(result, str(not_a_certificate), "PEM certificate")


def test_enroll_with_a_ca_file_of_another_ca_names_the_ca_file(
    estate: Estate, other_ca: Path, tmp_path: Path
) -> None:
    result = enroll(estate, new_token(estate), tmp_path / "agent", ca_file=other_ca)
    assert_one_error_line(result, str(other_ca))


def test_enroll_with_a_ca_file_that_is_not_a_certificate(
    estate: Estate, not_a_certificate: Path, tmp_path: Path
) -> None:
    result = enroll(estate, new_token(estate), tmp_path / "agent", ca_file=not_a_certificate)
    assert_one_error_line(result, str(not_a_certificate))


# ---- join tokens --------------------------------------------------------------------------


def test_join_token_is_one_time(estate: Estate, tmp_path: Path) -> None:
    token = new_token(estate)
    first = enroll(estate, token, tmp_path / "first")
    assert first.returncode == 0, first
    second = enroll(estate, token, tmp_path / "second")
    assert second.returncode == 1
    assert_one_error_line(second, "already used", "create a new one")
    # Nothing of the refused identity is kept, and the control plane knows one agent only.
    assert not (tmp_path / "second" / "identity.json").exists()
    assert not (tmp_path / "second" / "agent.crt").exists()
    with estate.client() as client:
        names = [a.name for a in client.list_agents()]
    assert names.count("first") == 1 and "second" not in names


def test_expired_join_token(estate: Estate, tmp_path: Path) -> None:
    token = new_token(estate, "--ttl", "1")
    time.sleep(1.2)  # the token's lifetime, not a timing assertion
    result = enroll(estate, token, tmp_path / "late")
    assert result.returncode == 1
    assert_one_error_line(result, "expired")
    assert not (tmp_path / "late" / "identity.json").exists()


@pytest.mark.parametrize(
    ("token", "needle"),
    [
        ("garbage", "malformed join token"),
        ("mjt_0123456789abcdef.short", "malformed join token"),
        # Well-formed but never issued.
        ("mjt_0123456789abcdef." + "A" * 43, "not valid"),
    ],
    ids=["garbage", "truncated", "unknown"],
)
def test_invalid_join_tokens(estate: Estate, tmp_path: Path, token: str, needle: str) -> None:
    result = enroll(estate, token, tmp_path / "agent")
    assert result.returncode == 1
    line = assert_one_error_line(result, needle)
    assert token not in line or token == "garbage"  # secrets are never echoed back


def test_tokens_create_without_a_server_data_dir(estate: Estate, tmp_path: Path) -> None:
    result = estate.cli(
        "tokens", "create", "--data-dir", str(tmp_path / "none"), "--environment", ENV
    )
    assert_one_error_line(result, str(tmp_path / "none"), "meridian server start")


def test_enroll_with_a_long_agent_name(estate: Estate, tmp_path: Path) -> None:
    data_dir = tmp_path / ("n" * 100)
    result = enroll(estate, new_token(estate), data_dir)
    assert result.returncode == 0, result.stderr


# ---- agents and runs ----------------------------------------------------------------------


def test_agent_start_with_the_wrong_environment(estate: Estate, enrolled_dir: Path) -> None:
    result = estate.cli(
        "agent", "start", "--environment", "somewhere-else", "--data-dir", str(enrolled_dir)
    )
    assert result.returncode == 2
    assert_one_error_line(result, "'somewhere-else'", repr(ENV), "identity.json")


def test_agent_start_without_enrollment(estate: Estate, tmp_path: Path) -> None:
    result = estate.cli("agent", "start", "--environment", ENV, "--data-dir", str(tmp_path))
    assert result.returncode == 1
    assert_one_error_line(result, "not enrolled", "meridian agent enroll")


@pytest.mark.parametrize("command", ["show", "logs"])
def test_unknown_run_id(estate: Estate, command: str) -> None:
    result = estate.cli("runs", command, "0f0f0f0f-nope")
    assert result.returncode == 1
    assert_one_error_line(result, "'0f0f0f0f-nope'")


# ---- oversized bundles --------------------------------------------------------------------


def write_flow_with_payload(directory: Path, size: int) -> Path:
    """A flow directory whose random (incompressible) data file makes the bundle ~``size``."""
    flows = write_flows(directory)
    (directory / "payload.bin").write_bytes(os.urandom(size))
    return flows


def test_bundle_above_the_server_limit_is_refused_by_meridian_run(tmp_path: Path) -> None:
    limit = 256 * 1024
    config = ServerConfig(
        data_dir=tmp_path / "server",
        listen="127.0.0.1:0",
        agent_listen="127.0.0.1:0",
        max_bundle_bytes=limit,
    )
    flows = write_flow_with_payload(tmp_path / "big", 2 * limit)
    with ThreadedControlPlane(config) as plane:
        token = create_api_token(config.data_dir, "operator")
        result = subprocess.run(
            meridian_cmd("run", f"{flows}:beta"),
            capture_output=True,
            text=True,
            timeout=DEADLINE_S,
            env=child_env(
                {
                    "MERIDIAN_CONTROL_PLANE": plane.address,
                    "MERIDIAN_CA_FILE": str(plane.ca_file),
                    "MERIDIAN_TOKEN": token,
                }
            ),
            cwd=tmp_path,
        )
        with ControlClient(
            plane.address, plane.ca_file, timeout_s=DEADLINE_S, token=token
        ) as client:
            runs = client.list_runs()
    assert result.returncode == 1
    assert_one_error_line(result, f"at most {limit}", ".meridianignore")
    assert runs == []


def test_bundle_above_the_runner_limit_is_refused_before_upload(
    estate: Estate, tmp_path: Path
) -> None:
    limit = 64 * 1024
    flows = write_flow_with_payload(tmp_path / "big", 2 * limit)
    # Counted before: other tests in this module may have run "beta" on the shared estate.
    before = run_count(estate, "beta")
    with estate.client() as client, pytest.raises(BundleError) as caught:
        run_flow(client, f"{flows}:beta", {}, max_bundle_bytes=limit)
    message = str(caught.value)
    assert "above the limit" in message and ".meridianignore" in message
    assert run_count(estate, "beta") == before


def test_meridianignore_makes_the_same_flow_fit(estate: Estate, tmp_path: Path) -> None:
    """The fix the error message suggests works: ignoring the payload lets the run start."""
    limit = 64 * 1024
    flows = write_flow_with_payload(tmp_path / "fits", 2 * limit)
    (tmp_path / "fits" / ".meridianignore").write_text("payload.bin\n")
    with estate.client() as client:
        outcome = run_flow(client, f"{flows}:beta", {}, max_bundle_bytes=limit)
    assert outcome.state == "COMPLETED" and outcome.result == 1


def test_debug_flag_shows_the_traceback(estate: Estate, flows_file: Path) -> None:
    result = estate.cli("run", f"{flows_file}:gamma", "--debug")
    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert nonempty_lines(result.stderr)[-1].startswith("error: no flow named 'gamma'")
