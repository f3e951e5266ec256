"""Every ``meridian`` command line in deploy/ and docs/deployment.md parses with the real CLI.

A renamed or removed option, or a value its type refuses (``--capacity=many``), fails here
instead of in someone's first deployment. The expected sets pin which commands each file runs,
so a renamed subcommand (which would make the extractor skip a line) fails too.
"""

from __future__ import annotations

import pytest

from meridian.cli.main import build_parser
from tests.deploy.artefacts import (
    DEPLOY,
    DEPLOYMENT_DOC,
    DOC_VARIABLES,
    KUBERNETES_VARIABLES,
    SCRIPT_VARIABLES,
    SYSTEMD_VARIABLES,
    CommandLine,
    compose_commands,
    compose_services,
    container_commands,
    dockerfile_exec_form,
    dockerfile_instructions,
    kubernetes_containers,
    markdown_shell_blocks,
    relative,
    shell_commands,
    systemd_commands,
)


def dockerfile_commands() -> list[CommandLine]:
    source = "deploy/container/Dockerfile"
    found = container_commands(None, dockerfile_exec_form("CMD"), f"{source} (CMD)", {})
    for instruction, rest in dockerfile_instructions():
        if instruction == "RUN":
            found += shell_commands(rest, f"{source} (RUN)", {})
    return found


def collect() -> dict[str, list[CommandLine]]:
    """Command lines by the file they come from."""
    by_file: dict[str, list[CommandLine]] = {"deploy/container/Dockerfile": dockerfile_commands()}
    compose = "deploy/compose/compose.yaml"
    by_file[compose] = [
        line for name in compose_services() for line in compose_commands(name, SCRIPT_VARIABLES)
    ]
    for script in sorted(DEPLOY.rglob("*.sh")):
        by_file[relative(script)] = shell_commands(
            script.read_text(encoding="utf-8"), relative(script), SCRIPT_VARIABLES
        )
    for container in kubernetes_containers():
        by_file.setdefault(relative(container.path), []).extend(
            container.commands(KUBERNETES_VARIABLES)
        )
    for unit in sorted((DEPLOY / "systemd").glob("*.service")):
        by_file[relative(unit)] = systemd_commands(unit, SYSTEMD_VARIABLES)
    by_file[relative(DEPLOYMENT_DOC)] = [
        line
        for block in markdown_shell_blocks(DEPLOYMENT_DOC)
        for line in shell_commands(block, relative(DEPLOYMENT_DOC), DOC_VARIABLES)
    ]
    return by_file


ALL = [line for lines in collect().values() for line in lines]

SERVER = ("server", "start")
TOKEN = ("tokens", "create")
ENROLL = ("agent", "enroll")
AGENT = ("agent", "start")
HELP = (None, None)
EXPECTED = {
    "deploy/container/Dockerfile": {SERVER, HELP},
    "deploy/compose/compose.yaml": {SERVER, TOKEN, ENROLL, AGENT},
    "deploy/compose/enroll-agent.sh": {TOKEN, ENROLL},
    "deploy/kubernetes/control-plane/statefulset.yaml": {SERVER},
    "deploy/kubernetes/agent/deployment.yaml": {ENROLL, AGENT},
    "deploy/systemd/meridian-server.service": {SERVER},
    "deploy/systemd/meridian-agent.service": {ENROLL, AGENT},
    "docs/deployment.md": {
        SERVER,
        TOKEN,
        ENROLL,
        AGENT,
        ("api-tokens", "create"),
        ("login", None),
        ("agents", "list"),
    },
}


@pytest.mark.parametrize("line", ALL, ids=lambda line: f"{line.source}: {' '.join(line.argv)}")
def test_command_line_parses_with_the_meridian_cli(line: CommandLine) -> None:
    line.parse()  # raises UsageError naming the unknown option or bad value


def command_of(line: CommandLine) -> tuple[str | None, str | None]:
    # parse_known_args: an unknown option is the other test's business, not this one's.
    try:
        namespace, _ = build_parser().parse_known_args(list(line.argv))
    except SystemExit:  # --help
        return None, None
    return namespace.command, getattr(namespace, "action", None)


def test_each_file_runs_the_expected_commands() -> None:
    found = {source: {command_of(line) for line in lines} for source, lines in collect().items()}
    assert found == EXPECTED


def test_server_start_can_name_the_hosts_its_certificate_covers() -> None:
    # Every artefact here depends on this flag: a certificate that covers only localhost
    # fails the TLS name check of every agent and client on another host or container.
    namespace, unknown = build_parser().parse_known_args(
        ["server", "start", "--server-name", "cp.example.com", "--server-name", "cp"]
    )
    assert not unknown, (
        "`meridian server start` has no --server-name (repeatable, into ServerConfig."
        "server_names): the deploy/ artefacts and docs/deployment.md need it"
    )
    assert namespace.server_name == ["cp.example.com", "cp"]
