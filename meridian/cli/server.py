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
    expand_path,
    logging_to,
    parse_address,
    positive_float,
    wait_for_stop,
)

if TYPE_CHECKING:
    from control_plane import ServerConfig


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
    start.set_defaults(func=cmd_start)


def usage_banner(address: str, ca_file: Path, data_dir: Path) -> list[str]:
    """What to type next, printed once the server listens."""
    return [
        f"Meridian control plane listening on {address}",
        f"CA certificate: {ca_file}",
        "",
        "Point the CLI at it:",
        f"  export {ENV_CONTROL_PLANE}={address}",
        f"  export {ENV_CA_FILE}={ca_file}",
        "Create a one-time join token for each agent (on this host):",
        f"  meridian tokens create --data-dir {data_dir} --environment NAME",
        "",
        "Press Ctrl-C to stop.",
    ]


async def serve(config: ServerConfig, grace: float) -> None:
    """Start, print the banner, run until a signal or termination, then shut down."""
    from control_plane import ControlPlane

    plane = ControlPlane(config)
    await plane.start()
    try:
        print("\n".join(usage_banner(plane.address, plane.ca_file, config.data_dir)), flush=True)
        terminated = asyncio.ensure_future(plane.wait_for_termination())
        reason = await wait_for_stop(terminated)
        if reason == "finished":
            await terminated  # surfaces the error if the server stopped on its own
        else:
            print("Shutting down...", flush=True)
            terminated.cancel()
    finally:
        await plane.shutdown(grace)


def cmd_start(args: argparse.Namespace) -> int:
    listen = parse_address(args.listen, allow_port_zero=True)
    from control_plane import ServerConfig

    data_dir = expand_path(args.data_dir)
    config = ServerConfig(data_dir=data_dir, listen=listen, db_url=args.db or None)
    data_dir.mkdir(parents=True, exist_ok=True)
    with logging_to(None, debug=args.debug):
        asyncio.run(serve(config, args.shutdown_grace))
    return 0
