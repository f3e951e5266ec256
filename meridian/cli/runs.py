"""``meridian runs list|show|logs``: read runs, their audit view and their step logs.

``cancel``, ``resume`` and ``retry`` live in ``meridian.cli.recovery``; ``approve`` and
``reject`` in ``meridian.cli.approvals``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from meridian import models
from meridian.cli import approvals, recovery
from meridian.cli.common import add_client_options, connect, positive_int
from meridian.cli.pending import pending_lines, pending_to_dict
from meridian.cli.render import (
    format_clock,
    format_datetime,
    format_seconds,
    iso,
    render_run,
    run_to_dict,
    seconds_between,
    table,
    to_json,
)

LOG_PAGE = 5000


def register(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    runs = commands.add_parser("runs", help="list, show, cancel, resume and approve runs",
                               parents=parents)  # fmt: skip
    actions = runs.add_subparsers(dest="action", metavar="ACTION", required=True)

    listing = actions.add_parser("list", help="recent runs, newest first", parents=parents)
    listing.add_argument("--limit", metavar="N", type=positive_int, default=50)
    listing.add_argument("--state", metavar="STATE", default="", help="e.g. FAILED")
    listing.add_argument("--flow", metavar="NAME", default="", help="only runs of this flow")
    listing.add_argument("--json", action="store_true", help="print JSON")
    add_client_options(listing)
    listing.set_defaults(func=cmd_list)

    show = actions.add_parser("show", help="the audit view of one run", parents=parents)
    show.add_argument("run", metavar="RUN", help="run id or a unique prefix of it")
    show.add_argument("--json", action="store_true", help="print the audit view as JSON")
    add_client_options(show)
    show.set_defaults(func=cmd_show)

    logs = actions.add_parser("logs", help="the step logs of one run", parents=parents)
    logs.add_argument("run", metavar="RUN", help="run id or a unique prefix of it")
    logs.add_argument("--step", metavar="NAME_OR_KEY", default="",
                      help="only this step (a key like load#1, or a step name)")  # fmt: skip
    add_client_options(logs)
    logs.set_defaults(func=cmd_logs)

    recovery.register(actions, parents)
    approvals.register(actions, parents)


# ---- pure formatting --------------------------------------------------------------------------


def render_run_list(runs: Sequence[models.RunSummary]) -> str:
    if not runs:
        return "no runs"
    rows = [
        [
            r.flow_run_id,
            r.flow_name,
            r.state,
            format_datetime(r.created_at),
            format_seconds(seconds_between(r.created_at, r.ended_at)),
            f"{r.steps_total}" + (f" ({r.steps_failed} failed)" if r.steps_failed else ""),
        ]
        for r in runs
    ]
    return table(("RUN", "FLOW", "STATE", "CREATED", "DURATION", "STEPS"), rows)


def run_list_to_json(runs: Sequence[models.RunSummary]) -> list[dict[str, Any]]:
    return [
        {
            "flow_run_id": r.flow_run_id,
            "flow_name": r.flow_name,
            "state": r.state,
            "created_at": iso(r.created_at),
            "ended_at": iso(r.ended_at),
            "steps_total": r.steps_total,
            "steps_failed": r.steps_failed,
        }
        for r in runs
    ]


def format_log_line(entry: models.StepLogLine) -> str:
    line = entry.line
    at: datetime | None = line.at if line is not None else None
    stream = line.stream if line is not None else ""
    text = line.text if line is not None else ""
    return f"{format_clock(at)} {entry.step_key} #{entry.attempt_number} {stream:<6} | {text}"


# ---- commands ---------------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    with connect(args) as client:
        runs = client.list_runs(limit=args.limit, state=args.state.upper(), flow_name=args.flow)
    print(to_json(run_list_to_json(runs)) if args.json else render_run_list(runs))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with connect(args) as client:
        detail = client.get_run(args.run)
    if args.json:
        print(to_json({**run_to_dict(detail), **pending_to_dict(detail)}))
    else:
        print(render_run(detail, pending_lines(detail)))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    with connect(args) as client:
        # Resolve a prefix to the full id first so logs accept what `runs show` accepts.
        run_id = client.get_run(args.run).flow_run_id
        after_id, printed = 0, 0
        while True:
            page = client.get_logs(run_id, step_key=args.step, after_id=after_id, limit=LOG_PAGE)
            for entry in page.lines:
                print(format_log_line(entry))
            printed += len(page.lines)
            if not page.lines or page.next_after_id <= after_id:
                break
            after_id = page.next_after_id
    if printed == 0:
        suffix = f" for step {args.step!r}" if args.step else ""
        print(f"no log lines{suffix}", file=sys.stderr)
    return 0
