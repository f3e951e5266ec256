"""``meridian login`` and ``meridian api-tokens create|list|revoke``: who may call the API.

API tokens are issued on the control-plane host (like join tokens: whoever can read its data
directory already controls it); people then save one with ``meridian login``.
"""

from __future__ import annotations

import argparse
from typing import Any

from meridian.cli.common import (
    DEFAULT_SERVER_DIR,
    MAX_TTL_S,
    CliError,
    add_client_options,
    bounded_seconds,
    connect,
    expand_path,
)
from meridian.cli.render import format_datetime, iso, table, to_json


def register(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    login = commands.add_parser(
        "login", help="check an API token and save it in a connection profile", parents=parents
    )
    add_client_options(login)
    login.set_defaults(func=cmd_login)

    tokens = commands.add_parser(
        "api-tokens",
        help="manage API tokens (for people, CI and flow runners)",
        description="Issue, list and revoke API tokens. Acts locally on the control plane's "
        "data directory: run it on the control-plane host.",
        parents=parents,
    )
    actions = tokens.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="issue an API token", parents=parents)
    create.add_argument("--role", required=True, choices=("viewer", "operator", "admin"))
    create.add_argument("--name", default="", help="who or what it is for")
    create.add_argument("--environment", action="append", default=[], metavar="NAME",
                        help="scope the token to this environment (repeatable)")  # fmt: skip
    create.add_argument("--ttl", metavar="SECONDS", type=bounded_seconds(MAX_TTL_S), default=None)
    listing = actions.add_parser("list", help="API tokens and their state", parents=parents)
    listing.add_argument("--json", action="store_true")
    revoke = actions.add_parser("revoke", help="revoke an API token", parents=parents)
    revoke.add_argument("token_id", metavar="TOKEN_ID")
    for parser, func in ((create, cmd_create), (listing, cmd_list), (revoke, cmd_revoke)):
        parser.add_argument("--data-dir", metavar="DIR", default=str(DEFAULT_SERVER_DIR))
        parser.add_argument("--db", metavar="URL", help="database URL if not the default SQLite")
        parser.set_defaults(func=func)


def cmd_login(args: argparse.Namespace) -> int:
    from meridian.cli.profiles import save_profile

    if not args.token:
        raise CliError("pass --token mat_... (from `meridian api-tokens create`)")
    with connect(args) as client:
        client.list_runs(limit=1)  # proves address, CA and token before anything is saved
        address, ca_file = client.address, client.ca_file
    path = save_profile(
        args.profile,
        {"control_plane": address, "ca_file": str(ca_file.resolve()), "token": args.token},
    )
    print(f"logged in to {address}; profile {args.profile!r} saved in {path}")
    return 0


def _data_dir(args: argparse.Namespace) -> Any:
    data_dir = expand_path(args.data_dir)
    if not data_dir.is_dir():
        raise CliError(f"no control-plane data directory at {data_dir}")
    return data_dir


def cmd_create(args: argparse.Namespace) -> int:
    from control_plane.admin import create_api_token

    token = create_api_token(
        _data_dir(args),
        args.role,
        name=args.name,
        environments=args.environment,
        ttl_s=args.ttl,
        db_url=args.db or None,
    )
    print(token)  # alone on stdout: TOKEN=$(meridian api-tokens create ...)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from control_plane.admin import api_tokens

    tokens = api_tokens(_data_dir(args), db_url=args.db or None)
    if args.json:
        print(to_json([
            {"token_id": t.token_id, "name": t.name, "role": t.role, "state": t.state,
             "environments": list(t.environments), "created_at": iso(t.created_at),
             "expires_at": iso(t.expires_at), "last_used_at": iso(t.last_used_at)}
            for t in tokens
        ]))  # fmt: skip
        return 0
    rows = [[t.token_id, t.name or "-", t.role, t.state, format_datetime(t.last_used_at)]
            for t in tokens]  # fmt: skip
    print(table(("TOKEN", "NAME", "ROLE", "STATE", "LAST USED"), rows) if rows else "no tokens")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    from control_plane.admin import revoke_api_token_by_id

    info = revoke_api_token_by_id(_data_dir(args), args.token_id, db_url=args.db or None)
    print(f"API token {info.token_id} ({info.role}) is {info.state}")
    return 0
