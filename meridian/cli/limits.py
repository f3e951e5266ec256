"""``meridian limits set NAME N | list | delete NAME``: named global concurrency limits that
steps take with ``@step(concurrency="NAME")`` (over the network; setting and deleting need an
admin token, listing a viewer's).

A step that names a limit is assigned only while it holds one of the limit's N slots; the
others wait in line and say so ("waiting for concurrency limit 'warehouse' (4/4 held; 2nd in
line)"). N = 0 pauses everything that takes the limit.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from meridian._limits import LimitInfo
from meridian.cli.common import add_client_options, bounded_int, connect
from meridian.cli.render import table, to_json

HEADERS = ("LIMIT", "SIZE", "HELD", "WAITING", "HOLDERS")
MAX_SHOWN_HOLDERS = 3
MAX_LIMIT = 10_000  # the control plane's bound (orchestration/limits.py)


def register(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    limits = commands.add_parser(
        "limits", help="named global concurrency limits that steps take", parents=parents
    )
    actions = limits.add_subparsers(dest="action", metavar="ACTION", required=True)
    setting = actions.add_parser(
        "set",
        help="create a limit or change its size (over the network; admins)",
        description="Steps with @step(concurrency=NAME) run at most N at a time across the "
        "whole estate. Lowering N stops no running step: no new one starts until fewer than N "
        "hold a slot. Recorded in the audit log.",
        parents=parents,
    )
    setting.add_argument("name", metavar="NAME")
    setting.add_argument("limit", metavar="N", type=bounded_int(0, MAX_LIMIT),
                         help=f"0 (nothing starts: a pause) to {MAX_LIMIT}")  # fmt: skip
    add_client_options(setting)
    setting.set_defaults(func=cmd_set)

    listing = actions.add_parser(
        "list", help="every limit with its holders and waiters (over the network)", parents=parents
    )
    listing.add_argument("--json", action="store_true", help="print JSON")
    add_client_options(listing)
    listing.set_defaults(func=cmd_list)

    deleting = actions.add_parser(
        "delete",
        help="delete a limit nothing holds or waits for (over the network; admins)",
        parents=parents,
    )
    deleting.add_argument("name", metavar="NAME")
    add_client_options(deleting)
    deleting.set_defaults(func=cmd_delete)


def render_limits(limits: Sequence[LimitInfo], *, all_holders: bool = False) -> str:
    if not limits:
        return "no concurrency limits (create one: meridian limits set NAME N)"
    rows = [
        [x.name, str(x.limit), str(len(x.holders)), str(x.waiting), _holders(x, all_holders)]
        for x in limits
    ]
    return table(HEADERS, rows)


def _holders(limit: LimitInfo, show_all: bool) -> str:
    if not limit.holders:
        return "-"
    shown = limit.holders if show_all else limit.holders[:MAX_SHOWN_HOLDERS]
    more = len(limit.holders) - len(shown)
    return ", ".join(shown) + (f" (+{more} more)" if more else "")


def limits_to_json(limits: Sequence[LimitInfo]) -> list[dict[str, Any]]:
    return [
        {"name": x.name, "limit": x.limit, "holders": list(x.holders), "waiting": x.waiting}
        for x in limits
    ]


def cmd_set(args: argparse.Namespace) -> int:
    with connect(args) as client:
        limit = client.set_limit(args.name, args.limit)
    print(f"concurrency limit {limit.name!r} set to {limit.limit} ({len(limit.holders)} held)")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with connect(args) as client:
        limits = client.list_limits()
    print(to_json(limits_to_json(limits)) if args.json else render_limits(limits))
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    with connect(args) as client:
        limit = client.delete_limit(args.name)
    print(f"concurrency limit {limit.name!r} deleted")
    return 0
