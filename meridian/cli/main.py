"""Entry point of the ``meridian`` command: builds the parser and owns error reporting.

Every failure becomes exactly one ``error: ...`` line on stderr and a non-zero exit code (2 for
usage errors, 1 otherwise); ``--debug`` adds the traceback. ``main`` returns the exit code
instead of calling ``sys.exit`` so tests (and ``meridian dev``'s own tests) can call it directly.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from meridian.cli import (
    access,
    agent,
    agents,
    audit,
    completion,
    deploy,
    deployments,
    dev,
    environments,
    limits,
    results,
    run,
    runs,
    sealkeys,
    server,
    tokens,
    transfers,
)
from meridian.cli.common import ArgumentParser, CliError, UsageError, one_line
from meridian.core.errors import ConnectionFailed, MeridianError

COMMAND_MODULES = (
    *(server, tokens, access, agent, run, runs, results, transfers, agents, environments),
    *(audit, deploy, deployments, limits),
    *(sealkeys, dev, completion),
)

# Where each top-level command acts: on this host's files (no network, no token: whoever can
# read the data directory already controls it) or over the network (gRPC + TLS to the control
# plane, with an API token). Shown in `meridian --help`.
WHERE = {
    "server": "local: serves --data-dir",
    "join-tokens": "local: on the server's --data-dir",
    "api-tokens": "local: on the server's --data-dir",
    "login": "network",
    "agent": "network + the agent's --data-dir",
    "run": "network",
    "runs": "network",
    "results": "network",
    "transfers": "network",
    "agents": "network",
    "environments": "network",
    "audit": "network",
    "deploy": "network",
    "deployments": "network",
    "limits": "network",
    "seal-key": "local: key files",
    "dev": "local: a throwaway estate",
    "completion": "local",
}
# What shells report for a process killed by SIGPIPE (128 + 13), as `cmd | head` expects.
EXIT_BROKEN_PIPE = 141
EPILOG = """\
where commands act:
  local    on this host, on a control plane's data directory (--data-dir, default
           ~/.meridian/server) or on local files; no network and no API token needed:
           server, join-tokens (alias: tokens), api-tokens, seal-key, dev, completion
  network  over gRPC + TLS to the control plane (--control-plane, --ca-file, --token or a
           profile saved by `meridian login`): login, run, runs, results, transfers,
           agents, environments, audit; agent dials the control plane and keeps its
           identity in its own --data-dir
"""


def build_parser() -> ArgumentParser:
    """The full command tree; each command module adds its own subcommands."""
    # --debug is accepted before or after the subcommand; SUPPRESS keeps a subparser's
    # default from overwriting a value given at the top level.
    debug_parent = argparse.ArgumentParser(add_help=False)
    debug_parent.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )
    parser = ArgumentParser(
        prog="meridian",
        description="Run Python workflows across clouds and sites; audit them in one place.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", default=False, help="show tracebacks")
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {_version()}", help="print the version"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        module.register(commands, [debug_parent])
    _say_where(commands)
    return parser


def _say_where(commands: argparse._SubParsersAction[ArgumentParser]) -> None:
    """Tag each command's one-line help with where it acts (``WHERE``), once."""
    for choice in commands._choices_actions:
        where = WHERE.get(choice.dest)
        if where and choice.help and "[" not in choice.help:
            choice.help = f"{choice.help} [{where}]"


def _version() -> str:
    """The installed distribution's version (the source tree's when run uninstalled)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("meridian-orchestrator")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _describe(exc: BaseException, args: argparse.Namespace | None) -> tuple[str, int]:
    """The one-line message and exit code for an exception."""
    if isinstance(exc, CliError):
        return str(exc), exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", 1
    if isinstance(exc, ConnectionFailed):
        message = one_line(str(exc))
        if not message.lower().startswith("cannot "):
            address = getattr(args, "control_plane", None) or _profile_address(args)
            message = f"cannot reach {address}: {message}"
        return message, 1
    if isinstance(exc, MeridianError):
        return one_line(str(exc)) or type(exc).__name__, 1
    if isinstance(exc, ImportError):
        return f"a Meridian component is missing ({exc}); reinstall meridian-orchestrator", 1
    # Anything else is a bug; still one line, and --debug shows where it came from.
    detail = one_line(str(exc))
    return f"unexpected {type(exc).__name__}: {detail} (rerun with --debug for details)", 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: ``sys.argv[1:]``) and return the exit code."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    args: argparse.Namespace | None = None
    try:
        parser = build_parser()
        completion.complete(parser)
        args = parser.parse_args(arguments)
        result: int = args.func(args)
        return result
    except SystemExit as exc:  # --help / --version from argparse
        return exc.code if isinstance(exc.code, int) else 0
    except BrokenPipeError:
        # Whoever read the output stopped (``meridian runs logs RUN | head``): not an error,
        # and the interpreter's last flush of stdout must not fail again at exit.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives until the process exits
        return EXIT_BROKEN_PIPE
    except BaseException as exc:
        message, code = _describe(exc, args)
        debug = getattr(args, "debug", False) or "--debug" in arguments
        if debug and not isinstance(exc, UsageError):
            traceback.print_exc()
        print(f"error: {one_line(message)}", file=sys.stderr)
        return code


if __name__ == "__main__":  # pragma: no cover - ``python -m meridian`` uses meridian/__main__.py
    sys.exit(main())


def _profile_address(args: argparse.Namespace | None) -> str:
    """The address a client command used when no flag or variable gave one."""
    from meridian.cli.common import DEFAULT_CONTROL_PLANE
    from meridian.cli.profiles import profile

    try:
        saved = profile(getattr(args, "profile", "default") or "default")
    except MeridianError:
        saved = {}
    return str(saved.get("control_plane") or DEFAULT_CONTROL_PLANE)
