"""``meridian audit list|export|verify``: read the control plane's hash-chained audit log.

``verify`` prints the head hash so it can be anchored outside the database (a ticket, a
write-once bucket, a chat channel): a chain rewritten by someone with database access no
longer contains an anchored hash. See docs/audit.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from meridian import models
from meridian.cli.common import UsageError, add_client_options, connect, positive_int
from meridian.cli.render import table, to_json, truncate

# The encoding the control plane hashes timestamps with; exports keep it so every record's
# hash can be recomputed from the exported line.
HASHED_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
DETAILS_WIDTH = 60


def register(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    audit = commands.add_parser(
        "audit", help="read, export and verify the tamper-evident audit log", parents=parents
    )
    actions = audit.add_subparsers(dest="action", metavar="ACTION", required=True)

    listing = actions.add_parser("list", help="the latest audit records", parents=parents)
    listing.add_argument(
        "--since",
        metavar="ISO",
        type=parse_since,
        help="records at or after this time, oldest first (e.g. 2026-01-31)",
    )
    listing.add_argument("--limit", metavar="N", type=positive_int, default=50)
    listing.add_argument("--json", action="store_true", help="print JSON")
    add_client_options(listing)
    listing.set_defaults(func=cmd_list)

    export = actions.add_parser("export", help="every record, one JSON object a line",
                                parents=parents)  # fmt: skip
    export.add_argument("--since", metavar="ISO", type=parse_since, help="default: all")
    export.add_argument("--format", choices=["jsonl"], default="jsonl")
    export.add_argument("--output", metavar="FILE", help="write here instead of stdout")
    add_client_options(export)
    export.set_defaults(func=cmd_export)

    verify = actions.add_parser(
        "verify",
        help="check that no record was edited, removed or reordered; print the head hash",
        parents=parents,
    )
    verify.add_argument("--json", action="store_true", help="print JSON")
    add_client_options(verify)
    verify.set_defaults(func=cmd_verify)


def parse_since(text: str) -> datetime:
    """ISO-8601 date or date-time; without a zone it means UTC."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"invalid time {text!r}: use ISO-8601, e.g. 2026-01-31 or 2026-01-31T12:00:00Z"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def record_to_dict(record: models.AuditRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "at": record.at.astimezone(UTC).strftime(HASHED_TIME_FORMAT),
        "actor": record.actor,
        "action": record.action,
        "subject": record.subject,
        "details": record.details,
        "prev_hash": record.prev_hash,
        "hash": record.hash,
    }


def cmd_list(args: argparse.Namespace) -> int:
    with connect(args) as client:
        # Without --since the interesting part is the end of the log.
        records = client.list_audit_records(
            since=args.since, limit=args.limit, newest=args.since is None
        )
    if args.json:
        print(to_json([record_to_dict(r) for r in records]))
    elif not records:
        print("No audit records" + (" since then" if args.since else ""))
    else:
        print(table(["ID", "AT", "ACTOR", "ACTION", "SUBJECT", "DETAILS"], _rows(records)))
    return 0


def _rows(records: Iterable[models.AuditRecord]) -> Iterable[list[str]]:
    for r in records:
        at = r.at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
        yield [str(r.id), at, r.actor, r.action, r.subject, truncate(r.details_json, DETAILS_WIDTH)]


def cmd_export(args: argparse.Namespace) -> int:
    with connect(args) as client:
        if args.output:
            # Written aside and renamed at the end: a cut-off export never looks complete.
            target = Path(args.output)
            partial = target.with_name(target.name + ".partial")
            with partial.open("w", encoding="utf-8") as out:
                count = _write_jsonl(client.iter_audit_records(since=args.since), out)
            partial.replace(target)
            print(f"exported {count} audit record(s) to {target}", file=sys.stderr)
        else:
            _write_jsonl(client.iter_audit_records(since=args.since), sys.stdout)
    return 0


def _write_jsonl(records: Iterable[models.AuditRecord], out: IO[str]) -> int:
    count = 0
    for record in records:
        out.write(json.dumps(record_to_dict(record), sort_keys=True, ensure_ascii=False) + "\n")
        count += 1
    return count


def cmd_verify(args: argparse.Namespace) -> int:
    with connect(args) as client:
        report = client.verify_audit()
    if args.json:
        print(to_json(_verification_to_dict(report)))
    elif report.ok:
        print(f"audit log intact: {report.records} record(s)")
        print(f"head: record {report.head_id} {report.head_hash}")
    else:
        print(f"audit log NOT intact at record {report.first_bad_id}: {report.problem}")
        print(f"last intact record: {report.head_id} {report.head_hash}")
    return 0 if report.ok else 1


def _verification_to_dict(report: models.AuditVerification) -> dict[str, Any]:
    return {
        "ok": report.ok,
        "records": report.records,
        "head_id": report.head_id,
        "head_hash": report.head_hash,
        "first_bad_id": report.first_bad_id,
        "problem": report.problem,
    }
