"""``meridian run FILE:FLOW``: run a flow with this process as its flow runner.

The flow body runs here; its steps run on agents. Progress is printed as the control plane
reports it (one line per event), then the final state and where to find the audit view.
``meridian dev`` reuses :class:`ProgressPrinter` and :func:`finish_lines`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from meridian import models
from meridian.cli.common import UsageError, add_client_options, connect, parse_params
from meridian.cli.render import (
    error_to_dict,
    format_clock,
    short_type,
    to_json,
    truncate,
)
from meridian.core.sealing import mask_sealed

if TYPE_CHECKING:
    from meridian.sdk.runner import RunOutcome


def register(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    run = commands.add_parser(
        "run",
        help="run a flow now, streaming its progress",
        parents=parents,
        description="Run FILE:FLOW with this process as the flow runner; steps run on agents.",
    )
    run.add_argument("entrypoint", metavar="FILE:FLOW", help="e.g. flows/etl.py:nightly_etl")
    run.add_argument(
        "-p",
        "--param",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="flow parameter (repeatable); converted using the flow's type hints",
    )
    run.add_argument("--json", action="store_true", help="print the outcome as JSON on stdout")
    add_client_options(run)
    run.set_defaults(func=cmd_run)


def check_entrypoint(text: str) -> str:
    """``path/to/file.py:flow_name`` with an existing file, else a usage error."""
    path, sep, name = text.rpartition(":")
    if not sep or not path or not name.isidentifier():
        raise UsageError(f"invalid entrypoint {text!r}: expected path/to/file.py:flow_name")
    if not Path(path).expanduser().is_file():
        raise UsageError(f"flow file not found: {path}")
    return text


def format_update(update: models.RunUpdate) -> str:
    """One progress line: time, step key, what happened, and the server's detail message."""
    what = update.kind
    detail = update.message
    outcome = update.step_outcome
    if outcome is not None and outcome.error is not None:
        error = outcome.error
        detail = f"{error.error_class}: {short_type(error.type)}: {error.message}"
    if update.run_state:
        what, detail = "run.finished", f"{update.run_state} {detail}".strip()
    line = f"{format_clock(update.at)}  {(update.step_key or '-'):<20} {what:<18}"
    return f"{line} {truncate(mask_sealed(detail), 100)}".rstrip()


# Always directly follows "attempt.running" for the same step: a line that says nothing new.
HIDDEN_KINDS = frozenset({"step.running"})


def approval_hint(approval: models.ApprovalInfo) -> list[str]:
    """What to run to decide a pending approval (printed when a run starts waiting)."""
    run, key = approval.flow_run_id, approval.key
    when = ""
    if approval.deadline is not None:
        when = f" (it times out at {format_clock(approval.deadline)} UTC)"
    return [
        f"  The run waits for approval {key}{when}. Decide it with:",
        f"    meridian runs approve {run} {key} [--reason TEXT]",
        f"    meridian runs reject {run} {key} --reason TEXT",
    ]


class ProgressPrinter:
    """``on_update`` callback for run_flow: prints each event once, in order, and how to
    decide an approval the run starts waiting for."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._last_event_id = 0

    def __call__(self, update: models.RunUpdate) -> None:
        # The runner may re-watch after a reconnect; event ids make the output idempotent.
        if update.event_id and update.event_id <= self._last_event_id:
            return
        self._last_event_id = max(self._last_event_id, update.event_id)
        if update.kind in HIDDEN_KINDS:
            return
        lines = [format_update(update)]
        approval = update.approval
        if update.kind == "approval.requested" and approval is not None and not approval.decided:
            lines += approval_hint(approval)
        print("\n".join(lines), file=self._stream or sys.stdout, flush=True)


def finish_lines(outcome: RunOutcome) -> list[str]:
    """The closing lines after a run: state, error (if any) and the audit hint."""
    lines = [f"Run {outcome.flow_run_id} finished: {outcome.state}"]
    error = outcome.error
    if error is not None:
        lines.append(f"  {error.error_class}: {error.type}: {truncate(error.message, 200)}")
    lines.append(f"Audit view: meridian runs show {outcome.flow_run_id}")
    return lines


def outcome_to_dict(outcome: RunOutcome) -> dict[str, Any]:
    return {
        "flow_run_id": outcome.flow_run_id,
        "state": outcome.state,
        "result": outcome.result,
        "error": error_to_dict(outcome.error),
    }


def cmd_run(args: argparse.Namespace) -> int:
    from meridian.sdk.runner import run_flow

    entrypoint = check_entrypoint(args.entrypoint)
    params = parse_params(args.param)
    # With --json, stdout carries only the JSON document; progress goes to stderr.
    progress_stream = sys.stderr if args.json else sys.stdout
    with connect(args) as client:
        outcome = run_flow(client, entrypoint, params, on_update=ProgressPrinter(progress_stream))
    if args.json:
        print(to_json(outcome_to_dict(outcome)))
    else:
        print("\n".join(finish_lines(outcome)))
    return 0 if outcome.state == "COMPLETED" else 1
