"""``meridian tokens create``: mint a one-time join token on the control-plane host.

It works on the server's data directory (and database) directly rather than over gRPC: whoever
can read that directory already holds the CA, so no extra credential is needed to bootstrap.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from meridian.cli.common import (
    DEFAULT_SERVER_DIR,
    CliError,
    UsageError,
    expand_path,
    positive_float,
)


def register(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    tokens = commands.add_parser("tokens", help="manage agent join tokens", parents=parents)
    actions = tokens.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser(
        "create", help="create a one-time join token for an environment", parents=parents
    )
    create.add_argument(
        "--data-dir",
        metavar="DIR",
        default=str(DEFAULT_SERVER_DIR),
        help=f"the control plane's data directory (default {DEFAULT_SERVER_DIR})",
    )
    create.add_argument("--environment", metavar="NAME", required=True, help="e.g. aws-prod")
    create.add_argument(
        "--ttl",
        metavar="SECONDS",
        type=positive_float,
        default=3600.0,
        help="how long the token stays valid (default 3600)",
    )
    create.add_argument("--db", metavar="URL", help="database URL if not the default SQLite")
    create.set_defaults(func=cmd_create)


def cmd_create(args: argparse.Namespace) -> int:
    environment = args.environment.strip()
    if not environment:
        raise UsageError("--environment must not be empty")
    data_dir = expand_path(args.data_dir)
    if not data_dir.is_dir():
        raise CliError(
            f"no control-plane data directory at {data_dir}: start the server once with "
            f"`meridian server start --data-dir {data_dir}`"
        )
    from control_plane import create_join_token

    token = create_join_token(data_dir, environment, ttl_s=args.ttl, db_url=args.db or None)
    # The token alone goes to stdout so `TOKEN=$(meridian tokens create ...)` works.
    print(token)
    print(
        f"one-time join token for environment {environment!r}, valid {args.ttl:g}s; enroll with:\n"
        "  meridian agent enroll --control-plane HOST:PORT --ca-file CA_FILE --token TOKEN",
        file=sys.stderr,
    )
    return 0
