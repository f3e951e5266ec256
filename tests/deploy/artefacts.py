"""Reading deploy/ for its tests: YAML documents, the Dockerfile, and every ``meridian`` command.

Command lines are collected from wherever an operator or a container would run them:

* the Dockerfile: ENTRYPOINT + CMD (exec form) and RUN (shell form);
* compose.yaml: the image's ENTRYPOINT (or the service's ``entrypoint``) + ``command``;
* Kubernetes containers: ``command``/``args``, with ``sh -c SCRIPT`` read as shell;
* shell scripts (``*.sh``) under deploy/;
* systemd units: ``ExecStart=``, and comments written as ``#   $ command`` (continued by ``\\``);
* docs/deployment.md: fenced ``sh`` blocks.

In shell text, a word whose basename is ``meridian`` (or the image, ``meridian:TAG``, in
``docker run``) starts a command when the next word is a
top-level subcommand (or ``--help``/``--debug``): that skips ``sudo -u meridian``,
``useradd --gid meridian --home-dir ...`` and ``kubectl -n meridian exec``.
A renamed subcommand therefore makes a command line vanish rather than fail, which is why
tests also pin the set of commands each file runs. Variables are replaced with sample values
the caller gives; an unknown variable is an error, so nothing is silently skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from meridian.cli.main import build_parser

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DOCKERFILE = DEPLOY / "container" / "Dockerfile"
COMPOSE_FILE = DEPLOY / "compose" / "compose.yaml"
KUBERNETES = DEPLOY / "kubernetes"
DEPLOYMENT_DOC = REPO / "docs" / "deployment.md"

# Sample values for the variables the artefacts use (each file says what they stand for).
SYSTEMD_VARIABLES = {
    "SERVER_NAME": "cp.example.com",
    "ENVIRONMENT": "aws-prod",
    "LABELS": "--label cloud=aws --label region=eu-west-1",
    "CONFIG": "/etc/meridian/agent.toml",
}
SCRIPT_VARIABLES = {"token": "mjt_example"}
KUBERNETES_VARIABLES = {"MERIDIAN_JOIN_TOKEN": "mjt_example"}
DOC_VARIABLES: dict[str, str] = {}

_VARIABLE = re.compile(r"\$\{(\w+)(?::-[^}]*)?\}|\$\((\w+)\)|\$(\w+)")
_OPERATOR = set("();<>|&")
TOP_LEVEL_OPTIONS = {"--help", "--debug"}


@dataclass(frozen=True)
class CommandLine:
    source: str  # where it was found, for test ids and messages
    argv: tuple[str, ...]  # the arguments after `meridian`

    def parse(self) -> argparse.Namespace:
        return parse_cli(self.argv)


def parse_cli(argv: tuple[str, ...] | list[str]) -> argparse.Namespace:
    """Parse with Meridian's own parser (raises UsageError for unknown options or values).

    ``--help`` parses too (argparse exits 0 after printing it): an empty Namespace.
    """
    try:
        return build_parser().parse_args(list(argv))
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
        return argparse.Namespace(command=None)


@cache
def top_level_commands() -> frozenset[str]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return frozenset(action.choices)
    raise AssertionError("the meridian parser has no subcommands")


def relative(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


# ---- YAML -------------------------------------------------------------------------------------


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yaml", ".yml"})


def load_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def kubernetes_objects() -> list[tuple[Path, dict[str, Any]]]:
    """Every object of every manifest (kustomization files excluded), with its file."""
    return [
        (path, doc)
        for path in sorted(KUBERNETES.rglob("*.yaml"))
        if path.name != "kustomization.yaml"
        for doc in load_documents(path)
    ]


# ---- the Dockerfile ---------------------------------------------------------------------------


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """``(INSTRUCTION, rest)`` pairs, continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    pairs = []
    for text in logical:
        instruction, _, rest = text.strip().partition(" ")
        pairs.append((instruction.upper(), rest.strip()))
    return pairs


def dockerfile_exec_form(instruction: str) -> list[str]:
    """The JSON array of the last ENTRYPOINT or CMD (exec form is required)."""
    values = [rest for name, rest in dockerfile_instructions() if name == instruction]
    assert values, f"Dockerfile has no {instruction}"
    value = json.loads(values[-1])
    assert isinstance(value, list), f"{instruction} must use the exec (JSON) form"
    return [str(v) for v in value]


def image_entrypoint() -> list[str]:
    return dockerfile_exec_form("ENTRYPOINT")


# ---- shell text -------------------------------------------------------------------------------


def substitute(words: list[str], variables: Mapping[str, str], *, split_bare: bool) -> list[str]:
    """Replace ``$X``, ``${X}``, ``${X:-d}`` and Kubernetes' ``$(X)`` with sample values.

    ``split_bare``: a word that is exactly ``$X`` becomes several words (systemd's rule).
    """
    result: list[str] = []
    for word in words:
        bare = re.fullmatch(r"\$(\w+)", word)
        if split_bare and bare:
            result.extend(_lookup(bare.group(1), variables).split())
            continue
        result.append(
            _VARIABLE.sub(lambda m: _lookup(next(g for g in m.groups() if g), variables), word)
        )
    return result


def _lookup(name: str, variables: Mapping[str, str]) -> str:
    if name not in variables:
        raise KeyError(f"no sample value for variable ${name}; add it to the test's variables")
    return variables[name]


def shell_commands(
    text: str, source: str, variables: Mapping[str, str], *, split_bare: bool = False
) -> list[CommandLine]:
    """The ``meridian`` command lines in shell ``text``."""
    found = []
    for line in text.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        try:
            words = list(lexer)
        except ValueError as exc:
            raise ValueError(f"{source}: cannot split {line!r}: {exc}") from exc
        for segment in _segments(words):
            argv = _meridian_argv(segment)
            if argv is not None:
                argv = substitute(argv, variables, split_bare=split_bare)
                found.append(CommandLine(source, tuple(argv)))
    return found


def _segments(words: list[str]) -> Iterator[list[str]]:
    """Simple commands: split at ; && || | ( ) and redirections."""
    segment: list[str] = []
    for word in words:
        if set(word) <= _OPERATOR:
            yield segment
            segment = []
        else:
            segment.append(word)
    yield segment


def _meridian_argv(words: list[str]) -> list[str] | None:
    for index, word in enumerate(words[:-1]):
        after = words[index + 1]
        # `meridian`, `/usr/local/bin/meridian`, or the image (`docker run ... meridian:0.1.0`)
        program = os.path.basename(word).split(":")[0] == "meridian"
        if program and (after in top_level_commands() or after in TOP_LEVEL_OPTIONS):
            return words[index + 1 :]
    return None


def container_commands(
    command: list[str] | None, args: list[str] | None, source: str, variables: Mapping[str, str]
) -> list[CommandLine]:
    """What a container runs: the image's ENTRYPOINT unless ``command`` replaces it."""
    argv = [*(command or image_entrypoint()), *(args or [])]
    if len(argv) >= 3 and os.path.basename(argv[0]) in {"sh", "bash"} and argv[1] == "-c":
        return shell_commands(argv[2], source, variables)
    if argv and os.path.basename(argv[0]) == "meridian":
        words = substitute(argv[1:], variables, split_bare=False)
        return [CommandLine(source, tuple(words))]
    return []


# ---- systemd units and markdown ---------------------------------------------------------------


def systemd_commands(path: Path, variables: Mapping[str, str]) -> list[CommandLine]:
    """``ExecStart=`` lines and ``#   $ command`` examples in comments."""
    source = relative(path)
    found: list[CommandLine] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    example: str | None = None  # a `$ command` in the comments, while it is continued
    for line in lines:
        if not line.startswith("#"):
            example = None
            continue
        text = line[1:].strip()
        if example is None:
            if not text.startswith("$ "):
                continue
            example = text[2:]
        else:
            example += " " + text
        if example.endswith("\\"):
            example = example[:-1]
            continue
        found += shell_commands(example, source, variables)
        example = None
    joined = "\n".join(lines).replace("\\\n", " ")
    for line in joined.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip().startswith("ExecStart"):
            value = value.strip().lstrip("-@:+!")
            found += shell_commands(value, source, variables, split_bare=True)
    return found


def markdown_shell_blocks(path: Path) -> list[str]:
    """The text of every fenced ``sh``/``bash``/``console`` block (``$`` prompts removed)."""
    blocks = re.findall(r"^```(?:sh|bash|shell|console)\n(.*?)^```", path.read_text(), re.M | re.S)
    return [re.sub(r"^\$ ", "", block, flags=re.M) for block in blocks]


# ---- compose and Kubernetes workloads ---------------------------------------------------------


def compose_services() -> dict[str, dict[str, Any]]:
    (document,) = load_documents(COMPOSE_FILE)
    services: dict[str, dict[str, Any]] = document["services"]
    return services


def bind_mount_source(service: dict[str, Any], target: str) -> Path | None:
    """The host file a compose service bind-mounts at ``target`` (short syntax)."""
    for volume in service.get("volumes", []):
        source, _, rest = str(volume).partition(":")
        if rest.split(":")[0] == target and source.startswith((".", "/")):
            return (COMPOSE_FILE.parent / source).resolve()
    return None


def compose_commands(name: str, variables: Mapping[str, str]) -> list[CommandLine]:
    """What compose service ``name`` runs; an entrypoint script is read from its bind mount."""
    service = compose_services()[name]
    source = f"{relative(COMPOSE_FILE)} ({name})"
    entrypoint = service.get("entrypoint")
    if entrypoint and os.path.basename(entrypoint[0]) in {"sh", "bash"} and entrypoint[1] != "-c":
        script = bind_mount_source(service, entrypoint[1])
        assert script is not None, f"{source}: {entrypoint[1]} is not bind-mounted from a file"
        return shell_commands(script.read_text(encoding="utf-8"), source, variables)
    return container_commands(entrypoint, service.get("command"), source, variables)


@dataclass(frozen=True)
class Container:
    path: Path
    workload: dict[str, Any]  # the Deployment/StatefulSet
    spec: dict[str, Any]  # the container
    init: bool

    @property
    def pod(self) -> dict[str, Any]:
        pod: dict[str, Any] = self.workload["spec"]["template"]["spec"]
        return pod

    @property
    def volumes(self) -> dict[str, dict[str, Any]]:
        return {v["name"]: v for v in self.pod.get("volumes", [])}

    @property
    def claim_templates(self) -> set[str]:
        templates = self.workload["spec"].get("volumeClaimTemplates", [])
        return {t["metadata"]["name"] for t in templates}

    @property
    def source(self) -> str:
        return f"{relative(self.path)} ({self.spec['name']})"

    def commands(self, variables: Mapping[str, str]) -> list[CommandLine]:
        return container_commands(
            self.spec.get("command"), self.spec.get("args"), self.source, variables
        )


WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}


def kubernetes_containers() -> list[Container]:
    found = []
    for path, doc in kubernetes_objects():
        if doc["kind"] not in WORKLOAD_KINDS:
            continue
        pod = doc["spec"]["template"]["spec"]
        found += [Container(path, doc, c, True) for c in pod.get("initContainers", [])]
        found += [Container(path, doc, c, False) for c in pod["containers"]]
    return found
