"""Helpers shared by the CLI command modules: errors, argument parsing, client set-up, signals.

Command modules import what they need from here and keep heavy imports (the control plane, the
agent, gRPC) inside their handlers, so ``meridian runs list`` never loads the server code and a
missing optional piece only breaks the command that needs it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from meridian.core.selectors import reserved_label_problem, validate_key, validate_value

if TYPE_CHECKING:
    from meridian.client import ControlClient

ENV_CONTROL_PLANE = "MERIDIAN_CONTROL_PLANE"
ENV_CA_FILE = "MERIDIAN_CA_FILE"
ENV_TOKEN = "MERIDIAN_TOKEN"
ENV_PROFILE = "MERIDIAN_PROFILE"
DEFAULT_CONTROL_PLANE = "127.0.0.1:7443"
DEFAULT_SERVER_DIR = Path("~/.meridian/server")
DEFAULT_AGENT_DIR = Path("~/.meridian/agent")


class CliError(Exception):
    """An error the CLI reports as one line; ``exit_code`` is what the process returns."""

    exit_code = 1


class UsageError(CliError):
    """The command line itself is wrong (exit code 2, like argparse)."""

    exit_code = 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of printing usage and exiting.

    ``main`` turns the error into the single ``error: ...`` line every other failure gets;
    subparsers inherit this class because argparse builds them with ``type(self)``.
    """

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


# ---- argument values --------------------------------------------------------------------------

_HOST_PORT = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>\d{1,5})$")


def parse_address(text: str, *, allow_port_zero: bool = False) -> str:
    """Validate ``HOST:PORT`` (IPv6 hosts in brackets) and return it unchanged."""
    match = _HOST_PORT.match(text.strip())
    low = 0 if allow_port_zero else 1
    if match is None or not low <= int(match.group("port")) <= 65535:
        raise UsageError(f"invalid address {text!r}: expected HOST:PORT, e.g. 127.0.0.1:7443")
    return text.strip()


_PARAM_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_params(values: Iterable[str]) -> dict[str, str]:
    """``-p key=value`` pairs as raw strings; the flow's signature decides their types."""
    params: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not _PARAM_KEY.match(key):
            raise UsageError(
                f"invalid parameter {item!r}: expected key=value with a Python identifier as key"
            )
        if key in params:
            raise UsageError(f"parameter {key!r} given more than once")
        params[key] = value
    return params


def parse_labels(values: Iterable[str]) -> dict[str, str]:
    """``--label k=v`` (repeatable; ``k=v,k2=v2`` also accepted) into a dict.

    Keys and values follow the same Kubernetes-like rules as target selectors
    (:mod:`meridian.core.selectors`), so every label an agent advertises can be selected.
    """
    labels: dict[str, str] = {}
    for item in values:
        for pair in (p.strip() for p in item.split(",")):
            key, sep, value = pair.partition("=")
            if not sep:
                raise UsageError(f"invalid label {pair!r}: expected key=value, e.g. cloud=aws")
            problem = reserved_label_problem(key) or validate_key(key) or validate_value(value)
            if problem:
                raise UsageError(f"invalid label {pair!r}: {problem}")
            labels[key] = value
    return labels


def expand_path(text: str | Path) -> Path:
    return Path(text).expanduser()


# The longest a token may live: beyond ten years a time cannot always be represented.
MAX_TTL_S = 10 * 365 * 86_400.0


def bounded_seconds(high: float) -> Callable[[str], float]:
    """argparse ``type=`` for a positive duration in seconds of at most ``high``."""

    def parse(text: str) -> float:
        value = positive_float(text)
        if not value <= high:  # also NaN and infinity
            raise argparse.ArgumentTypeError(
                f"expected at most {high:g} seconds, got {text[:40]!r}"
            )
        return value

    parse.__name__ = "duration"
    return parse


def positive_float(text: str) -> float:
    """argparse ``type=`` for durations."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


UINT32_MAX = 2**32 - 1  # the largest count a request can carry


def int_between(text: str, low: int, high: int) -> int:
    """``text`` as a whole number from ``low`` to ``high``, else ArgumentTypeError with a
    message (never a value protobuf cannot carry, which would crash the call)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(
            f"expected a number from {low} to {high}, got {text[:40]!r}"
        )
    return value


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    """argparse ``type=`` for a whole number from ``low`` to ``high``."""

    def parse(text: str) -> int:
        return int_between(text, low, high)

    parse.__name__ = "number"  # argparse names the type in its error
    return parse


def positive_int(text: str) -> int:
    """argparse ``type=`` for counts (at most what the protocol's uint32 fields carry)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {text!r}")
    if value > UINT32_MAX:
        raise argparse.ArgumentTypeError(f"expected a number <= {UINT32_MAX}, got {text[:40]!r}")
    return value


# ---- the control-plane client -----------------------------------------------------------------


def add_client_options(parser: argparse.ArgumentParser) -> None:
    """``--control-plane``, ``--ca-file``, ``--token`` and ``--profile``: flags, then the
    environment variables, then the saved profile (`meridian login`)."""
    parser.add_argument(
        "--control-plane",
        metavar="HOST:PORT",
        default=os.environ.get(ENV_CONTROL_PLANE) or None,
        help=f"control plane address (env {ENV_CONTROL_PLANE}, default {DEFAULT_CONTROL_PLANE})",
    )
    parser.add_argument(
        "--ca-file",
        metavar="FILE",
        default=os.environ.get(ENV_CA_FILE) or None,
        help=f"CA certificate that signed the control plane's certificate (env {ENV_CA_FILE})",
    )
    parser.add_argument(
        "--token",
        metavar="TOKEN",
        default=os.environ.get(ENV_TOKEN) or None,
        help=f"API token (env {ENV_TOKEN}; `meridian login` saves one in a profile)",
    )
    parser.add_argument(
        "--profile",
        metavar="NAME",
        default=os.environ.get(ENV_PROFILE) or "default",
        help=f"saved connection profile (env {ENV_PROFILE}, default 'default')",
    )


def require_ca_file(value: str | None, *, hint: str) -> Path:
    """The CA file as a Path, or a clear error when it is not given or does not exist."""
    if not value:
        raise UsageError(f"no CA certificate given: {hint}")
    path = expand_path(value)
    if not path.is_file():
        raise CliError(f"CA file not found: {path}")
    return path


def connect(args: argparse.Namespace) -> ControlClient:
    """A ControlClient for the command's ``--control-plane`` / ``--ca-file``."""
    from meridian.cli.profiles import profile
    from meridian.client import ControlClient

    saved = profile(args.profile) if getattr(args, "profile", None) else {}
    address = parse_address(
        args.control_plane or saved.get("control_plane") or DEFAULT_CONTROL_PLANE
    )
    ca_file = require_ca_file(
        args.ca_file or saved.get("ca_file"),
        hint=f"pass --ca-file FILE or set {ENV_CA_FILE} (`meridian server start` prints it)",
    )
    token = getattr(args, "token", None) or saved.get("token")
    return ControlClient(address, ca_file, token=token)


# ---- long-running commands --------------------------------------------------------------------


async def wait_for_stop(*watched: asyncio.Future[Any]) -> str:
    """Wait for SIGINT/SIGTERM or for any of ``watched`` to finish; return which happened.

    Returns ``"signal"`` or ``"finished"``; the caller still owns (and should await) the
    watched tasks, so their exceptions surface. Signal handlers are only installed when running in
    the main thread (tests may call commands from elsewhere); the previous handlers come back
    on return so a second Ctrl-C during shutdown interrupts as usual.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait([stopper, *watched], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        for sig in installed:
            loop.remove_signal_handler(sig)
    return "signal" if stopper in done else "finished"


@contextlib.contextmanager
def logging_to(target: Path | None, *, debug: bool) -> Iterator[None]:
    """Send the components' logs to ``target`` (a file) or stderr for the command's duration.

    Long-running commands (server, agent, dev) log what happens behind the CLI's own output.
    The handler is removed afterwards so repeated ``main()`` calls in one process (tests) do
    not stack handlers.
    """
    handler: logging.Handler
    handler = logging.FileHandler(target) if target else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous_level)
        handler.close()


def one_line(text: str) -> str:
    """Collapse a possibly multi-line message into one line."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())
