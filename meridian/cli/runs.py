"""``meridian runs list|show|watch``: read runs, their audit view and their live progress.

``logs`` lives in ``meridian.cli.logs``; ``cancel``, ``resume`` and ``retry`` in
``meridian.cli.recovery``; ``approve`` and ``reject`` in ``meridian.cli.approvals``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from meridian import models
from meridian.cli import approvals, logs, recovery
from meridian.cli.common import add_client_options, connect, positive_int
from meridian.cli.logs import TERMINAL_RUN_STATES
from meridian.cli.pending import pending_lines, pending_to_dict
from meridian.cli.progress import progress_view
from meridian.cli.render import (
    format_datetime,
    format_result,
    format_seconds,
    iso,
    render_run,
    run_to_dict,
    seconds_between,
    stored_value,
    table,
    to_json,
)
from meridian.cli.run import add_progress_option


def register(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    runs = commands.add_parser(
        "runs", help="list, show, watch, cancel, resume, approve and delete runs; their logs",
        parents=parents,
    )  # fmt: skip
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

    logs.register(actions, parents)

    watch = actions.add_parser(
        "watch", help="the live progress view of a run until it ends", parents=parents
    )
    watch.add_argument("run", metavar="RUN", help="run id or a unique prefix of it")
    add_progress_option(watch)
    add_client_options(watch)
    watch.set_defaults(func=cmd_watch)

    recovery.register(actions, parents)
    approvals.register(actions, parents)

    delete = actions.add_parser(
        "delete",
        help="delete a finished run, its history and its stored results (admins; network)",
        description="Delete a finished run (COMPLETED, FAILED, CANCELLED or CRASHED) with its "
        "history. Its stored result objects are deleted at their sites by a connected agent of "
        "each environment, as soon as one is connected. Audited.",
        parents=parents,
    )
    delete.add_argument("run", metavar="RUN", help="run id or a unique prefix of it")
    delete.add_argument("--reason", default="", help="recorded in the audit log")
    add_client_options(delete)
    delete.set_defaults(func=cmd_delete)


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
            r.parent_run_id[:8] if r.parent_run_id else "-",
        ]
        for r in runs
    ]
    return table(("RUN", "FLOW", "STATE", "CREATED", "DURATION", "STEPS", "PARENT"), rows)


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
            "parent_run_id": r.parent_run_id or None,
        }
        for r in runs
    ]


# ---- commands ---------------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    with connect(args) as client:
        runs = client.list_runs(limit=args.limit, state=args.state.upper(), flow_name=args.flow)
    print(to_json(run_list_to_json(runs)) if args.json else render_run_list(runs))
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    with connect(args) as client:
        deleted = client.delete_run(args.run, args.reason)
    objects = deleted.stored_objects
    queued = f"; {objects} stored result object(s) queued for deletion at their sites"
    print(f"Deleted run {deleted.flow_run_id}" + (queued if objects else ""))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with connect(args) as client:
        detail = client.get_run(args.run)
    if args.json:
        print(to_json({**run_to_dict(detail), **pending_to_dict(detail)}))
    else:
        print(render_run(detail, pending_lines(detail)))
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    """Seed the view from the stored run, then follow its updates until it ends."""
    with connect(args) as client:
        detail = client.get_run(args.run)
        run_id = detail.flow_run_id
        state = detail.state
        if state not in TERMINAL_RUN_STATES:
            view = progress_view(sys.stdout, args.progress)
            seed = getattr(view, "state", None)
            if seed is not None:
                seed.seed(detail)
            after = max((e.event_id for e in detail.events), default=0)
            try:
                with view:
                    for update in client.watch_run(run_id, after):
                        view(update)
                        if update.run_state:
                            state = update.run_state
                            break
            except KeyboardInterrupt:
                print(f"stopped watching; run {run_id} goes on", file=sys.stderr)
                return 130
            if state not in TERMINAL_RUN_STATES:  # the stream ended early
                state = client.get_run(run_id).state
        final = client.get_run(run_id) if state != detail.state else detail
    print(f"Run {run_id}: {final.state}")
    if final.result_json:
        print("\n".join(format_result(stored_value(final.result_json), run_id)))
    print(f"Audit view: meridian runs show {run_id}")
    return 0 if final.state == "COMPLETED" else 1
