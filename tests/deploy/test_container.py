"""The container image: the Dockerfile against pyproject.toml, its ignore file, its health check.

No Docker here: the Dockerfile is read as text, and ``meridian-healthcheck`` runs against a
real control plane on loopback with a made-up ``/proc``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from control_plane import ServerConfig
from tests.deploy.artefacts import (
    DEPLOYMENT_DOC,
    DOCKERFILE,
    REPO,
    dockerfile_exec_form,
    dockerfile_instructions,
    image_entrypoint,
    parse_cli,
)
from tests.support.deadlines import DEADLINE_S
from tests.support.plane import ThreadedControlPlane

HEALTHCHECK = DOCKERFILE.parent / "healthcheck.py"
DOCKERIGNORE = DOCKERFILE.parent / "Dockerfile.dockerignore"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def instructions(name: str) -> list[str]:
    return [rest for instruction, rest in dockerfile_instructions() if instruction == name]


def build_args() -> dict[str, str]:
    pairs = (arg.partition("=") for arg in instructions("ARG"))
    return {name: value for name, _, value in pairs}


def copies() -> list[tuple[list[str], str]]:
    """``(sources, destination)`` of every COPY from the build context (not ``--from``)."""
    result = []
    for rest in instructions("COPY"):
        words = rest.split()
        if any(w.startswith("--from=") for w in words):
            continue
        paths = [w for w in words if not w.startswith("--")]
        result.append((paths[:-1], paths[-1]))
    return result


def default_command():
    return parse_cli(dockerfile_exec_form("CMD"))


# ---- the Dockerfile ---------------------------------------------------------------------------


def test_base_image_is_python_3_11_slim() -> None:
    assert build_args()["PYTHON_IMAGE"] == "python:3.11-slim"
    assert PYPROJECT["project"]["requires-python"] == ">=3.11"


def test_every_extra_named_for_the_build_exists_in_pyproject() -> None:
    extras = set(PYPROJECT["project"]["optional-dependencies"])
    named = {build_args()["EXTRAS"]}
    # Examples in the Dockerfile's comments and the deployment guide must work too.
    for text in (DOCKERFILE.read_text(), DEPLOYMENT_DOC.read_text()):
        named |= set(re.findall(r"EXTRAS=([\w,-]*)", text))
    for value in named:
        unknown = {e for e in value.split(",") if e} - extras
        assert not unknown, f"EXTRAS={value}: no such extra in pyproject.toml ({sorted(extras)})"


def test_the_comment_lists_every_runtime_extra() -> None:
    extras = set(PYPROJECT["project"]["optional-dependencies"]) - {"dev"}
    listed = re.search(r"EXTRAS lists extras of pyproject.toml \(([^)]*)\)", DOCKERFILE.read_text())
    assert listed is not None
    assert set(listed.group(1).replace(",", " ").split()) == extras


def test_every_package_and_the_readme_are_copied_into_the_build() -> None:
    copied = {source for sources, _ in copies() for source in sources}
    packages = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    for pattern in packages:
        top = pattern.rstrip("*").rstrip(".")
        assert top in copied, (
            f"pyproject packages {pattern!r} is not COPY'd: `pip install .` lacks it"
        )
    assert {"pyproject.toml", PYPROJECT["project"]["readme"]} <= copied


def test_entrypoint_is_meridian_and_the_default_command_is_the_control_plane() -> None:
    assert image_entrypoint() == ["meridian"]
    command = default_command()
    assert (command.command, command.action) == ("server", "start")
    # Inside a container the server must listen on all addresses, not on loopback.
    assert command.listen.startswith("0.0.0.0:")
    assert command.agent_listen.startswith("0.0.0.0:")
    assert command.data_dir.startswith("/var/lib/meridian/")


def test_exposed_ports_are_the_ports_the_default_command_listens_on() -> None:
    command = default_command()
    listened = {command.listen.rpartition(":")[2], command.agent_listen.rpartition(":")[2]}
    assert set(" ".join(instructions("EXPOSE")).split()) == listened


def test_runs_as_a_numeric_non_root_user_that_owns_the_data_dirs() -> None:
    user = instructions("USER")[-1]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, "USER must be numeric for runAsNonRoot"
    assert gid.isdigit() and int(gid) != 0
    setup = " ".join(instructions("RUN"))
    assert f"--uid {uid} " in setup and f"--gid {gid} " in setup
    for directory in ("/var/lib/meridian/server", "/var/lib/meridian/agent"):
        assert directory in setup, f"{directory} is not created in the image"
    assert "install -d -o meridian -g meridian -m 0700" in setup


def test_healthcheck_runs_the_installed_script() -> None:
    (healthcheck,) = instructions("HEALTHCHECK")
    command = re.search(r"CMD (\[.*\])", healthcheck)
    assert command is not None, "HEALTHCHECK must use the exec form"
    assert command.group(1) == '["meridian-healthcheck"]'
    assert (["deploy/container/healthcheck.py"], "/usr/local/bin/meridian-healthcheck") in copies()
    assert HEALTHCHECK.read_text().startswith("#!/usr/bin/env python3\n")


# ---- the ignore file --------------------------------------------------------------------------


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, for the patterns used here: the last matching pattern wins, and a
    pattern matching a directory matches everything under it."""
    verdict = False
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern.removeprefix("!").strip("/")
        regex = re.escape(body).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*")
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            verdict = not negated
    return verdict


def test_dockerignore_keeps_every_copied_source_and_drops_the_rest() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for sources, _ in copies():
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: no such file in the repository"
            assert not ignored(source, patterns), f"COPY {source} is excluded by {DOCKERIGNORE}"
    for heavy in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "meridian/__pycache__/x"):
        assert ignored(heavy, patterns), f"{heavy} would be sent to the Docker daemon"


# ---- meridian-healthcheck ---------------------------------------------------------------------


def fake_proc(root: Path, *argvs: list[str]) -> Path:
    for pid, argv in enumerate(argvs, start=1):
        (root / str(pid)).mkdir(parents=True)
        (root / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (root / "self").mkdir(exist_ok=True)  # not a pid: ignored
    return root


def run_healthcheck(proc: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MERIDIAN_HEALTHCHECK_PROC": str(proc)}
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK)],
        env=env,
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ThreadedControlPlane, str]]:
    data_dir = tmp_path_factory.mktemp("healthcheck-server")
    plane = ThreadedControlPlane(
        ServerConfig(data_dir=data_dir, listen="127.0.0.1:0", agent_listen="127.0.0.1:0")
    )
    port = plane.start().address.rpartition(":")[2]
    try:
        yield plane, port
    finally:
        plane.stop()


def server_argv(data_dir: Path, port: str) -> list[str]:
    # What the image's PID 1 looks like: the console script run by the venv's python.
    return [
        "/opt/meridian/bin/python",
        "/opt/meridian/bin/meridian",
        "server",
        "start",
        f"--data-dir={data_dir}",
        f"--listen=0.0.0.0:{port}",
        "--agent-listen=0.0.0.0:7444",
    ]


def test_healthcheck_passes_while_the_server_serves(
    server: tuple[ThreadedControlPlane, str], tmp_path: Path
) -> None:
    plane, port = server
    unrelated = ["/bin/sleep", "60"]
    proc = fake_proc(tmp_path, unrelated, server_argv(plane.config.data_dir, port))
    result = run_healthcheck(proc)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SERVING" in result.stdout


def test_healthcheck_fails_when_the_server_does_not_answer(tmp_path: Path) -> None:
    data_dir = tmp_path / "server"
    # The CA file stays; the server that used it, and its port, are gone.
    with ThreadedControlPlane(
        ServerConfig(data_dir=data_dir, listen="127.0.0.1:0", agent_listen="127.0.0.1:0")
    ) as plane:
        port = plane.address.rpartition(":")[2]
    result = run_healthcheck(fake_proc(tmp_path / "proc", server_argv(data_dir, port)))
    assert result.returncode == 1
    assert result.stdout.startswith("unhealthy: health check on 127.0.0.1:")


def test_healthcheck_of_an_agent_container_checks_that_the_agent_runs(tmp_path: Path) -> None:
    agent = ["/sbin/docker-init", "--", "meridian", "agent", "start", "--environment", "compose"]
    result = run_healthcheck(fake_proc(tmp_path / "proc", agent))
    assert result.returncode == 0
    assert result.stdout.strip() == "healthy: meridian agent is running"


def test_healthcheck_fails_without_a_meridian_process(tmp_path: Path) -> None:
    result = run_healthcheck(fake_proc(tmp_path / "proc", ["/bin/sh"]))
    assert result.returncode == 1
    assert "no meridian process" in result.stdout
