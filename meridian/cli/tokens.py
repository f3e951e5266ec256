"""``meridian join-tokens create|list|revoke``: agent join tokens, on the control-plane host.

``tokens`` is an alias (the name before 0.2): every documented ``meridian tokens ...`` line
still works.

It works on the server's data directory (and database) directly rather than over gRPC: whoever
can read that directory already holds the CA, so no extra credential is needed to bootstrap.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from meridian.cli.common import (
    DEFAULT_SERVER_DIR,
    MAX_TTL_S,
    CliError,
    UsageError,
    bounded_seconds,
    expand_path,
    parse_labels,
)
from meridian.cli.render import format_datetime, iso, table, to_json


def register(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    tokens = commands.add_parser(
        "join-tokens",
        aliases=["tokens"],
        help="manage agent join (enrollment) tokens",
        description="One-time tokens an agent enrolls with (`meridian agent enroll --token`). "
        "Acts locally on the control plane's data directory: run it on the control-plane host.",
        parents=parents,
    )
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
        type=bounded_seconds(MAX_TTL_S),
        default=3600.0,
        help="how long the token stays valid (default 3600)",
    )
    create.add_argument(
        "--label",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="pin a label (repeatable): the enrolled agent always carries it and may claim no "
        "labels of its own",
    )
    create.add_argument("--db", metavar="URL", help="database URL if not the default SQLite")
    create.set_defaults(func=cmd_create)

    listing = actions.add_parser("list", help="join tokens and their state", parents=parents)
    revoke = actions.add_parser("revoke", help="make an unused join token worthless",
                                parents=parents)  # fmt: skip
    revoke.add_argument("token_id", metavar="TOKEN_ID", help="the id shown by `tokens list`")
    for parser in (listing, revoke):
        parser.add_argument("--data-dir", metavar="DIR", default=str(DEFAULT_SERVER_DIR))
        parser.add_argument("--db", metavar="URL", help="database URL if not the default SQLite")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=cmd_list)
    revoke.set_defaults(func=cmd_revoke)


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
    from control_plane.admin import create_join_token

    labels = parse_labels(args.label)
    token = create_join_token(
        data_dir, environment, ttl_s=args.ttl, db_url=args.db or None, labels=labels
    )
    # The token alone goes to stdout so `TOKEN=$(meridian tokens create ...)` works.
    print(token)
    pinned = f" with labels {format_labels(labels)} pinned" if labels else ""
    print(
        f"one-time join token for environment {environment!r}{pinned}, valid {args.ttl:g}s; "
        "enroll with:\n"
        "  meridian agent enroll --control-plane HOST:PORT --ca-file CA_FILE --token TOKEN",
        file=sys.stderr,
    )
    return 0


def format_labels(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _data_dir(args: argparse.Namespace) -> Path:
    data_dir = expand_path(args.data_dir)
    if not data_dir.is_dir():
        raise CliError(f"no control-plane data directory at {data_dir}")
    return data_dir


def cmd_list(args: argparse.Namespace) -> int:
    from control_plane.admin import join_tokens

    tokens = join_tokens(_data_dir(args), db_url=args.db or None)
    if args.json:
        print(to_json([
            {
                "token_id": t.token_id,
                "environment": t.environment,
                "state": t.state,
                "labels": dict(sorted(t.labels.items())),
                "created_at": iso(t.created_at),
                "expires_at": iso(t.expires_at),
                "used_by_agent_id": t.used_by_agent_id,
            }
            for t in tokens
        ]))  # fmt: skip
        return 0
    rows = [
        [t.token_id, t.environment, format_labels(t.labels) or "-", t.state,
         format_datetime(t.expires_at), t.used_by_agent_id or "-"]
        for t in tokens
    ]  # fmt: skip
    headers = ("TOKEN", "ENVIRONMENT", "PINNED LABELS", "STATE", "EXPIRES", "USED BY")
    print(table(headers, rows) if rows
          else "no join tokens")  # fmt: skip
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    from control_plane.admin import revoke_token

    token_id = args.token_id.strip().removeprefix("mjt_").split(".", 1)[0]
    info = revoke_token(_data_dir(args), token_id, db_url=args.db or None)
    print(f"join token {info.token_id} ({info.environment}) is {info.state}")
    return 0
