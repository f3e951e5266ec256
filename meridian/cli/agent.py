"""``meridian agent enroll`` and ``meridian agent start``: run a site agent.

Enrollment records ``identity.json`` ({"agent_id", "environment", "control_plane"}) in the
agent's data directory. ``agent start`` checks ``--environment`` against it so an operator who
copies a command line to the wrong host gets an error instead of an agent advertising labels of
another environment (the control plane would refuse its work anyway, but silently).

One agent per data directory: ``agent start`` exits non-zero when another agent holds the
directory's lock (``agent.datadirlock``), and ``agent enroll`` is refused while one runs there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meridian.cli.agent_config import load_agent_config_file
from meridian.cli.common import (
    DEFAULT_AGENT_DIR,
    DEFAULT_CONTROL_PLANE,
    ENV_CA_FILE,
    ENV_CONTROL_PLANE,
    CliError,
    UsageError,
    expand_path,
    logging_to,
    parse_address,
    parse_labels,
    positive_float,
    positive_int,
    require_ca_file,
    wait_for_stop,
)
from meridian.core.logfmt import FORMATS, use_format
from meridian.core.sealing import KeyRing

if TYPE_CHECKING:
    from agent import AgentConfig

IDENTITY_FILE = "identity.json"


def register(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    agent = commands.add_parser("agent", help="enroll and run a site agent", parents=parents)
    actions = agent.add_subparsers(dest="action", metavar="ACTION", required=True)

    enroll = actions.add_parser(
        "enroll", help="trade a join token for a certificate", parents=parents
    )
    enroll.add_argument(
        "--control-plane",
        metavar="HOST:PORT",
        default=os.environ.get(ENV_CONTROL_PLANE) or DEFAULT_CONTROL_PLANE,
        help=f"control plane address (env {ENV_CONTROL_PLANE})",
    )
    enroll.add_argument(
        "--ca-file",
        metavar="FILE",
        default=os.environ.get(ENV_CA_FILE) or None,
        help=f"the control plane's CA certificate (env {ENV_CA_FILE})",
    )
    enroll.add_argument("--token", required=True, help="one-time join token")
    _add_data_dir(enroll)
    enroll.add_argument("--name", help="agent name shown in `meridian agents list` (default: host)")
    enroll.set_defaults(func=cmd_enroll)

    start = actions.add_parser("start", help="run the agent in the foreground", parents=parents)
    start.add_argument("--control-plane", metavar="HOST:PORT", help="default: from enrollment")
    start.add_argument(
        "--environment",
        metavar="NAME",
        required=True,
        help="must equal the environment the agent enrolled in",
    )
    start.add_argument(
        "--label",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="label to advertise (repeatable), e.g. cloud=aws",
    )
    start.add_argument(
        "--provider",
        metavar="TYPE",
        action="append",
        default=[],
        help="provider type to offer (repeatable; default process)",
    )
    start.add_argument(
        "--capacity",
        metavar="N",
        type=positive_int,
        default=4,
        help="steps run at once (default 4)",
    )
    start.add_argument(
        "--runner-slots",
        metavar="N",
        type=int,
        default=0,
        help="hosted flow bodies run at once here (decision 0018; default 0: none)",
    )
    start.add_argument(
        "--no-runner-fork-server",
        dest="runner_fork_server",
        action="store_false",
        help="start each hosted flow runner as a fresh Python process instead of forking it "
        "from the agent's runner fork server (slower to start; for debugging)",
    )
    _add_data_dir(start)
    start.add_argument("--ca-file", metavar="FILE", help="default: the CA saved at enrollment")
    start.add_argument(
        "--config",
        metavar="FILE",
        help="agent config (TOML or JSON): [providers.TYPE], [secrets.SCHEME], [sealing.keys], "
        "[limits] and [result_stores.NAME]",
    )
    start.add_argument(
        "--drain-grace",
        metavar="SECONDS",
        type=positive_float,
        default=30.0,
        help="on SIGTERM, how long running steps may finish (default 30)",
    )
    start.add_argument(
        "--log-format",
        choices=FORMATS,
        default="text",
        help="text (default) or json: one JSON object per log line",
    )
    start.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        default="",
        help="serve this agent's Prometheus metrics on HOST:PORT (plain HTTP; default off; "
        "needs the web extra)",
    )
    start.set_defaults(func=cmd_start)


def _add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        default=str(DEFAULT_AGENT_DIR),
        help=f"identity, journal and work dirs (default {DEFAULT_AGENT_DIR})",
    )


# ---- identity.json ----------------------------------------------------------------------------


def read_identity(data_dir: Path) -> dict[str, Any]:
    """The enrollment record, or a clear error when the agent was never enrolled here."""
    path = data_dir / IDENTITY_FILE
    try:
        identity = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CliError(
            f"agent is not enrolled: {path} does not exist; run `meridian agent enroll "
            f"--data-dir {data_dir} ...` first"
        ) from None
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read {path}: {exc}") from None
    if not isinstance(identity, dict) or not identity.get("environment"):
        raise CliError(f"{path} has no environment; enroll this agent again")
    return identity


def write_identity(data_dir: Path, agent_id: str, environment: str, control_plane: str) -> None:
    """Record enrollment, keeping any extra keys the agent package itself stored there."""
    path = data_dir / IDENTITY_FILE
    try:
        existing = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        existing = {}
    record = dict(existing) if isinstance(existing, dict) else {}
    record.update(agent_id=agent_id, environment=environment, control_plane=control_plane)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)  # atomic: a crash never leaves half an identity


def enroll_agent(
    control_plane: str, ca_file: Path, token: str, data_dir: Path, name: str | None
) -> tuple[str, str]:
    """Enroll and record the identity; returns (agent_id, environment). Used by ``dev`` too.

    Refused while an agent runs on ``data_dir`` (it holds the data dir's lock): a new key and
    certificate must not replace the identity under it."""
    from agent import enroll
    from agent.datadirlock import DataDirLock

    data_dir.mkdir(parents=True, exist_ok=True)
    lock = DataDirLock.acquire(data_dir, doing="enroll a new agent")
    try:
        result = enroll(control_plane, ca_file, token, data_dir, name=name)
        write_identity(data_dir, result.agent_id, result.environment, control_plane)
    finally:
        lock.release()
    return result.agent_id, result.environment


# ---- commands ---------------------------------------------------------------------------------


def cmd_enroll(args: argparse.Namespace) -> int:
    address = parse_address(args.control_plane)
    ca_file = require_ca_file(args.ca_file, hint=f"pass --ca-file FILE or set {ENV_CA_FILE}")
    data_dir = expand_path(args.data_dir)
    agent_id, environment = enroll_agent(address, ca_file, args.token.strip(), data_dir, args.name)
    print(f"enrolled agent {agent_id} in environment {environment!r}; identity in {data_dir}")
    print(
        f"start it with:\n  meridian agent start --environment {environment} "
        f"--data-dir {data_dir} --label KEY=VALUE --provider process"
    )
    return 0


def build_agent_config(args: argparse.Namespace) -> AgentConfig:
    """Validate the start options against the enrollment record and build an AgentConfig."""
    data_dir = expand_path(args.data_dir)
    labels = parse_labels(args.label)
    identity = read_identity(data_dir)
    enrolled = identity["environment"]
    if args.environment != enrolled:
        raise UsageError(
            f"--environment {args.environment!r} does not match the environment this agent "
            f"enrolled in ({enrolled!r}, recorded in {data_dir / IDENTITY_FILE})"
        )
    address = (
        args.control_plane or identity.get("control_plane") or os.environ.get(ENV_CONTROL_PLANE)
    )
    if not address:
        raise UsageError("no control plane address: pass --control-plane HOST:PORT")
    ca_file = require_ca_file(args.ca_file, hint="") if args.ca_file else None
    file_config = load_agent_config_file(expand_path(args.config)) if args.config else None
    provider_config = file_config.providers if file_config else {}
    # Key files are read now: a missing or too-open one stops the agent before it connects.
    seal_keys = KeyRing.from_references(file_config.seal_keys if file_config else {})
    from agent import AgentConfig
    from agent.limits import AgentLimits
    from agent.results import ResultStoresConfig

    try:
        limits = AgentLimits.from_mapping(file_config.limits if file_config else {})
    except ValueError as exc:
        raise UsageError(f"agent config {args.config}: [limits]: {exc}") from None

    return AgentConfig(
        control_plane=parse_address(address),
        data_dir=data_dir,
        ca_file=ca_file,
        labels=labels,
        providers=tuple(
            dict.fromkeys(
                [*(args.provider or ([] if provider_config else ["process"])), *provider_config]
            )
        ),
        provider_config=provider_config,
        secrets=file_config.secrets if file_config else {},
        seal_keys=seal_keys,
        capacity=args.capacity,
        runner_slots=_runner_slots(args.runner_slots),
        runner_fork_server=args.runner_fork_server,
        drain_grace_s=args.drain_grace,
        limits=limits,
        metrics_listen=args.metrics_listen,
        result_stores=(file_config and file_config.result_stores) or ResultStoresConfig({}, None),
    )


async def run_agent(config: AgentConfig, grace: float) -> None:
    """Run until a signal, then drain: stop taking work, let running steps finish, cancel."""
    from agent import Agent

    agent = Agent(config)
    running = asyncio.ensure_future(agent.run())
    reason = await wait_for_stop(running)
    if reason == "signal":
        print(f"draining (up to {grace:g}s for running steps)...", file=sys.stderr, flush=True)
        await agent.shutdown(grace)
    await running  # surfaces the error if the agent stopped on its own


def _sealing_note(keys: KeyRing) -> str:
    if not keys:
        return ""
    return "; sealing key groups " + ", ".join(f"{g} ({keys.fingerprint(g)})" for g in keys.groups)


def banner_labels(labels: dict[str, str] | Any) -> str:
    """The labels part of the start banner: what the agent advertises, and that the control
    plane adds the labels its join token pinned (the agent logs the full set on connect)."""
    advertised = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
    if not advertised:
        return "none advertised; any labels its join token pinned apply"
    return f"{advertised}, plus any its join token pinned"


def cmd_start(args: argparse.Namespace) -> int:
    config = build_agent_config(args)
    labels = banner_labels(config.labels)
    print(
        f"agent for environment {args.environment!r} connecting to {config.control_plane} "
        f"(labels {labels}; providers {', '.join(config.providers)}; capacity {config.capacity}"
        f"{_sealing_note(config.seal_keys)})",
        file=sys.stderr,
        flush=True,
    )
    with logging_to(None, debug=args.debug):
        use_format(args.log_format)
        asyncio.run(run_agent(config, args.drain_grace))
    return 0


MAX_RUNNER_SLOTS = 1000


def _runner_slots(value: int) -> int:
    if not 0 <= value <= MAX_RUNNER_SLOTS:
        raise UsageError(f"--runner-slots must be between 0 and {MAX_RUNNER_SLOTS}, got {value}")
    return value
