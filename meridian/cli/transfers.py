"""``meridian transfers``: the stored results that crossed environments, and how many bytes
went from which environment to which (egress), over the network (``ListTransfers``).

By default it prints the bytes of the completed transfers per (from, to) pair; ``--list``
adds the transfers themselves, newest first. ``--since 7d`` (or ``12h``, ``30m``, an ISO
date) and ``--run RUN`` narrow both.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from meridian import models
from meridian.cli.common import UsageError, add_client_options, connect, positive_int
from meridian.cli.render import (
    format_datetime,
    format_size,
    iso,
    table,
    to_json,
    transfer_to_dict,
    truncate,
)

CLIENT = "(client)"  # a download to a client is in no environment
ERROR_WIDTH = 60
_AGE = re.compile(r"^(?P<n>\d{1,6})(?P<unit>[smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def register(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    transfers = commands.add_parser(
        "transfers",
        help="bytes of stored results that crossed environments, per (from, to)",
        description="Print the bytes of completed result transfers between environments, "
        "summed per (from, to) pair; --list also prints each transfer.",
        parents=parents,
    )
    transfers.add_argument(
        "--since",
        metavar="AGE|ISO",
        type=parse_since,
        help="only transfers started since then: 7d, 12h, 30m, or an ISO date (default: all)",
    )
    transfers.add_argument("--run", metavar="RUN", default="", help="only this run's transfers")
    transfers.add_argument("--list", action="store_true", help="also list the transfers")
    transfers.add_argument("--limit", metavar="N", type=positive_int, default=50,
                           help="transfers listed at most (newest first)")  # fmt: skip
    transfers.add_argument("--json", action="store_true", help="print JSON")
    add_client_options(transfers)
    transfers.set_defaults(func=cmd_transfers)


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """An age (``7d``, ``12h``, ``30m``, ``90s``, ``2w``) back from now, or an ISO-8601 date
    or date-time (UTC when it names no zone)."""
    text = text.strip()
    match = _AGE.match(text)
    if match is not None:
        age = timedelta(**{_UNITS[match["unit"]]: int(match["n"])})
        return (now or datetime.now(UTC)) - age
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"invalid --since {text!r}: use an age such as 7d, 12h or 30m, or an ISO date "
            "such as 2026-01-31"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def cmd_transfers(args: argparse.Namespace) -> int:
    with connect(args) as client:
        listing = client.list_transfers(
            since=args.since, flow_run_id=args.run, limit=args.limit if args.list else 1
        )
    if args.json:
        document: dict[str, Any] = {
            "since": iso(args.since),
            "totals": [total_to_dict(t) for t in listing.totals],
        }
        if args.list:
            document["transfers"] = [transfer_to_dict(t) for t in listing.transfers]
        print(to_json(document))
        return 0
    print(render_transfers(listing, since=args.since, listed=args.list))
    return 0


def render_transfers(
    listing: models.TransferListing, *, since: datetime | None, listed: bool
) -> str:
    when = f" since {format_datetime(since)}" if since is not None else ""
    if not listing.totals:
        lines = [f"No completed transfers between environments{when}."]
    else:
        lines = [
            f"Bytes that crossed environments{when}:",
            table(TOTAL_HEADERS, total_rows(listing.totals)),
        ]
    if listed:
        lines.append("")
        if listing.transfers:
            lines.append(table(LIST_HEADERS, transfer_rows(listing.transfers)))
        else:
            lines.append("No transfers.")
    return "\n".join(lines)


TOTAL_HEADERS = ["FROM", "TO", "BYTES", "TRANSFERS"]
LIST_HEADERS = [
    "STARTED",
    "RUN",
    "STEP",
    "FROM",
    "TO",
    "STORE",
    "BYTES",
    "METHOD",
    "STATE",
    "ERROR",
]


def total_rows(totals: Iterable[models.TransferTotal]) -> Iterable[list[str]]:
    for t in totals:
        to = t.to_environment or CLIENT
        yield [t.from_environment, to, format_size(t.bytes), str(t.transfers)]


def transfer_rows(transfers: Iterable[models.TransferInfo]) -> Iterable[list[str]]:
    for t in transfers:
        yield [
            format_datetime(t.started_at),
            t.flow_run_id[:8],
            t.step_key or "-",
            t.from_environment,
            t.to_environment or CLIENT,
            t.store,
            format_size(t.bytes),
            t.method,
            t.state,
            truncate(t.error, ERROR_WIDTH),
        ]


def total_to_dict(total: models.TransferTotal) -> dict[str, Any]:
    return {
        "from_environment": total.from_environment,
        "to_environment": total.to_environment,
        "bytes": total.bytes,
        "transfers": total.transfers,
    }
