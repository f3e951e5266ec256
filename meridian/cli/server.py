"""``meridian server start``: run a control plane in the foreground until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meridian.cli.common import (
    DEFAULT_SERVER_DIR,
    ENV_CA_FILE,
    ENV_CONTROL_PLANE,
    UsageError,
    expand_path,
    logging_to,
    parse_address,
    positive_float,
    wait_for_stop,
)
from meridian.core.logfmt import FORMATS, use_format

if TYPE_CHECKING:
    from control_plane.config import ServerConfig


def register(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    server = commands.add_parser("server", help="run the control plane", parents=parents)
    actions = server.add_subparsers(dest="action", metavar="ACTION", required=True)
    start = actions.add_parser(
        "start", help="start the control plane in the foreground", parents=parents
    )
    start.add_argument("--db", metavar="URL", help="database URL (default: SQLite in the data dir)")
    start.add_argument(
        "--listen", metavar="HOST:PORT", default="127.0.0.1:7443", help="default 127.0.0.1:7443"
    )
    start.add_argument(
        "--agent-listen",
        metavar="HOST:PORT",
        default="127.0.0.1:7444",
        help="mutual-TLS listener agents connect to (default 127.0.0.1:7444)",
    )
    start.add_argument(
        "--advertise-agent-address",
        metavar="HOST:PORT",
        help="agent address to tell agents when it differs (e.g. behind a proxy)",
    )
    start.add_argument(
        "--server-name",
        metavar="NAME",
        action="append",
        default=[],
        help="DNS name or IP address clients and agents dial, added to the server certificate "
        "(repeatable; localhost and 127.0.0.1 are always included)",
    )
    start.add_argument(
        "--data-dir",
        metavar="DIR",
        default=str(DEFAULT_SERVER_DIR),
        help=f"CA, certificates and the SQLite database (default {DEFAULT_SERVER_DIR})",
    )
    start.add_argument(
        "--shutdown-grace",
        metavar="SECONDS",
        type=positive_float,
        default=5.0,
        help="how long in-flight calls may finish on shutdown (default 5)",
    )
    start.add_argument(
        "--heartbeat-interval",
        metavar="SECONDS",
        type=positive_float,
        default=5.0,
        help="how often agents heartbeat (default 5)",
    )
    start.add_argument(
        "--agent-lost-after",
        metavar="SECONDS",
        type=positive_float,
        default=30.0,
        help="silence after which an agent's attempts are lost, unless a step says otherwise "
        "(default 30)",
    )
    start.add_argument(
        "--runner-grace",
        metavar="SECONDS",
        type=positive_float,
        default=30.0,
        help="after a start, how long flow runners get to renew their leases before their "
        "runs count as CRASHED (default 30)",
    )
    start.add_argument(
        "--agent-certificate-hours",
        metavar="HOURS",
        type=certificate_hours,
        default=24.0,
        help="lifetime of agent certificates; agents rotate them over their stream after two "
        "thirds of it (default 24)",
    )
    start.add_argument(
        "--http-listen",
        metavar="HOST:PORT",
        help="serve the web console and /metrics over HTTPS here (same certificate and API "
        "tokens as the gRPC API; off unless given)",
    )
    start.add_argument(
        "--metrics-public",
        action="store_true",
        help="serve /metrics without a token (a scraper on a trusted network)",
    )
    start.add_argument(
        "--otlp-endpoint",
        metavar="URL",
        help="export a trace per finished run to this OTLP/HTTP endpoint, e.g. "
        "http://collector:4318 (needs the 'otel' extra)",
    )
    start.add_argument(
        "--run-retention-days",
        metavar="DAYS",
        type=retention_days,
        default=0.0,
        help="delete finished runs and their stored results this many days after they ended "
        "(default 0: keep them)",
    )
    start.add_argument(
        "--log-format",
        choices=FORMATS,
        default="text",
        help="text (default) or json: one JSON object per log line",
    )
    start.set_defaults(func=cmd_start)


MIN_CERT_HOURS = 10 / 3600
MAX_CERT_HOURS = 24 * 365


def certificate_hours(text: str) -> float:
    """Agent certificate lifetime: at least 10 seconds (rotation needs time), at most a year."""
    try:
        hours = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of hours, got {text!r}") from None
    if not MIN_CERT_HOURS <= hours <= MAX_CERT_HOURS:
        raise argparse.ArgumentTypeError(
            f"must be between {MIN_CERT_HOURS:.4f} (10 seconds) and {MAX_CERT_HOURS:.0f} hours"
        )
    return hours


def usage_banner(
    address: str, agent_address: str, ca_file: Path, data_dir: Path, http_address: str = ""
) -> list[str]:
    """What to type next, printed once the server listens."""
    listening = address
    host, _, port = address.rpartition(":")
    if host.strip("[]") in ("0.0.0.0", "::", ""):
        # Bound to every interface: clients must dial a real name (one in --server-name).
        address = f"HOST:{port}"
    return [
        f"Meridian control plane listening on {listening} (agents: {agent_address})",
        f"CA certificate: {ca_file}",
        *(
            [f"Web console and /metrics: https://{http_address}/ (log in with an API token)"]
            if http_address
            else []
        ),
        "",
        "Issue an API token (on this host) and point the CLI at the control plane:",
        f"  meridian api-tokens create --data-dir {data_dir} --role admin --name me",
        f"  meridian login --control-plane {address} --ca-file {ca_file} --token mat_...",
        f"  (or export {ENV_CONTROL_PLANE}={address} {ENV_CA_FILE}={ca_file} "
        "MERIDIAN_TOKEN=mat_...)",
        "Create a one-time join token for each agent (on this host):",
        f"  meridian tokens create --data-dir {data_dir} --environment NAME",
        f"then enroll agents with --control-plane {address}; they find the agent port themselves.",
        "",
        "Press Ctrl-C to stop.",
    ]


async def serve(config: ServerConfig, grace: float) -> None:
    """Start, print the banner, run until a signal or termination, then shut down."""
    from control_plane.server import ControlPlane

    plane = ControlPlane(config)
    await plane.start()
    terminated = asyncio.ensure_future(plane.wait_for_termination())
    try:
        banner = usage_banner(
            plane.address, plane.agent_address, plane.ca_file, config.data_dir, plane.http_address
        )
        print("\n".join(banner), flush=True)
        if await wait_for_stop(terminated) == "signal":
            print("Shutting down...", flush=True)
    finally:
        # Shut down before touching `terminated`: cancelling gRPC's termination wait would
        # cancel the server's own shutdown with it.
        await plane.shutdown(grace)
    await asyncio.wait_for(terminated, timeout=grace + 5)  # surfaces a server crash


def retention_days(text: str) -> float:
    """argparse ``type=`` for ``--run-retention-days``: 0 (keep) or a positive number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of days, got {text!r}") from None
    if not 0 <= value <= 100 * 365:
        raise argparse.ArgumentTypeError(f"expected 0 to 36500 days, got {text!r}")
    return value


def cmd_start(args: argparse.Namespace) -> int:
    listen = parse_address(args.listen, allow_port_zero=True)
    agent_listen = parse_address(args.agent_listen, allow_port_zero=True)
    advertise = args.advertise_agent_address
    if advertise:
        parse_address(advertise)
    http_listen = (
        parse_address(args.http_listen, allow_port_zero=True) if args.http_listen else None
    )
    if args.otlp_endpoint:
        from control_plane.telemetry.tracing import traces_url

        try:
            traces_url(args.otlp_endpoint)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    from control_plane.config import ServerConfig

    data_dir = expand_path(args.data_dir)
    config = ServerConfig(
        data_dir=data_dir,
        listen=listen,
        agent_listen=agent_listen,
        advertise_agent_address=advertise or None,
        db_url=args.db or None,
        heartbeat_interval_s=args.heartbeat_interval,
        agent_lost_after_s=args.agent_lost_after,
        runner_grace_s=args.runner_grace,
        agent_certificate_hours=args.agent_certificate_hours,
        server_names=(*args.server_name, *ServerConfig.server_names),
        http_listen=http_listen,
        metrics_public=args.metrics_public,
        otlp_endpoint=args.otlp_endpoint or None,
        run_retention_days=args.run_retention_days,
    )
    data_dir.mkdir(parents=True, exist_ok=True)
    with logging_to(None, debug=args.debug):
        use_format(args.log_format)
        asyncio.run(serve(config, args.shutdown_grace))
    return 0
