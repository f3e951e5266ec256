"""``meridian runs cancel|resume|retry``: stop a run cleanly, continue it, or run it again."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from meridian.cli.common import add_client_options, connect, positive_float
from meridian.cli.pending import unconfirmed, unconfirmed_lines
from meridian.cli.progress import progress_view
from meridian.cli.render import to_json
from meridian.cli.run import add_progress_option, finish_lines, outcome_to_dict

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}


def register(actions: Any, parents: list[argparse.ArgumentParser]) -> None:
    cancel = actions.add_parser(
        "cancel", help="cancel a run; its steps are stopped on their agents", parents=parents
    )
    cancel.add_argument("run", metavar="RUN", help="run id or a unique prefix of it")
    cancel.add_argument("--reason", default="", help="recorded in the run's history")
    cancel.add_argument(
        "--wait",
        metavar="SECONDS",
        type=positive_float,
        default=0.0,
        help="wait up to this long until every agent confirmed (the run is CANCELLED); "
        "exits 1, naming the attempts and agents, when the wait ends without it",
    )
    add_client_options(cancel)
    cancel.set_defaults(func=cmd_cancel)

    for name, text in (
        ("resume", "continue a crashed or failed run: completed steps are not run again"),
        ("retry", "run the same flow version with the same parameters again, as a new run"),
    ):
        parser = actions.add_parser(name, help=text, parents=parents)
        parser.add_argument("run", metavar="RUN", help="run id or a unique prefix of it")
        parser.add_argument(
            "--here",
            action="store_true",
            help="run the flow body in this process even when the run is hosted (a "
            "deployment's, `run --remote`): by default a hosted runner takes it and this "
            "command follows it to its end",
        )
        parser.add_argument("--json", action="store_true", help="print the outcome as JSON")
        add_progress_option(parser)
        add_client_options(parser)
        parser.set_defaults(func=cmd_resume if name == "resume" else cmd_retry)


def cmd_cancel(args: argparse.Namespace) -> int:
    with connect(args) as client:
        result = client.cancel_run(args.run, args.reason)
        state = result.state
        deadline = time.monotonic() + args.wait
        while state == "CANCELLING" and time.monotonic() < deadline:
            time.sleep(0.2)
            state = client.get_run(result.flow_run_id).state
        if state != "CANCELLING":
            print(f"Run {result.flow_run_id} is {state}")
            return 0
        detail = client.get_run(result.flow_run_id)
        held = unconfirmed(detail)
        statuses = {a.name: a.status for a in client.list_agents()} if held else {}
    waited = f" after waiting {args.wait:g}s" if args.wait else ""
    print(
        f"Run {result.flow_run_id} is still CANCELLING{waited}: "
        f"{len(held) or result.attempts_to_confirm} attempt(s) have not confirmed their cleanup"
    )
    print("\n".join(unconfirmed_lines(held, statuses)))
    if not args.wait:
        return 0
    print(
        "An agent that is stopped, cut off or stuck confirms when it recovers; one that never "
        "comes back is declared lost after its lease and the run then ends CANCELLED.",
        file=sys.stderr,
    )
    return 1


def cmd_resume(args: argparse.Namespace) -> int:
    from meridian.sdk.runner import resume_flow

    return _execute(args, resume_flow)


def cmd_retry(args: argparse.Namespace) -> int:
    from meridian.sdk.runner import retry_flow

    return _execute(args, retry_flow)


def _execute(args: argparse.Namespace, how: Any) -> int:
    progress = sys.stderr if args.json else sys.stdout
    view = progress_view(progress, args.progress)
    with connect(args) as client, view:
        outcome = how(client, args.run, on_update=view, here=args.here)
    if args.json:
        print(to_json(outcome_to_dict(outcome)))
    else:
        print("\n".join(finish_lines(outcome)))
    return 0 if outcome.state == "COMPLETED" else 1
