"""``meridian run FILE:FLOW``: run a flow with this process as its flow runner.

The flow body runs here; its steps run on agents. Progress is shown as the control plane
reports it (``meridian.cli.progress``: a live view on a terminal, bounded summary lines
otherwise; ``--progress events`` prints one line per event with :class:`ProgressPrinter`),
then the final state, the flow's result and where to find the audit view. ``meridian dev``
reuses :class:`ProgressPrinter` and :func:`finish_lines`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

from meridian import models
from meridian.cli.common import UsageError, add_client_options, connect, parse_params
from meridian.cli.progress import approval_hint, progress_view
from meridian.cli.render import (
    error_to_dict,
    format_clock,
    format_result,
    short_type,
    to_json,
    truncate,
)
from meridian.cli.resultparams import with_stored_results
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
    run.add_argument(
        "--remote",
        action="store_true",
        help="run the flow body on a hosted runner of an agent offering runner slots "
        "(decision 0018) instead of in this process; this command follows it",
    )
    run.add_argument(
        "--runner-target",
        metavar="SELECTOR",
        default="",
        help="with --remote: labels of the agents that may run the body, e.g. 'site=dc1'",
    )
    add_progress_option(run)
    add_client_options(run)
    run.set_defaults(func=cmd_run)


PROGRESS_MODES = ("auto", "live", "plain", "events")


def add_progress_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress",
        choices=PROGRESS_MODES,
        default="auto",
        help="auto (default): a live view on a terminal, else throttled summary lines; "
        "live; plain; events: one line per event (verbose)",
    )


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
    width = WAITING_WIDTH if update.kind == "attempt.waiting" else 100
    return f"{line} {truncate(mask_sealed(detail), width)}".rstrip()


# Why a step waits is the whole point of its line: show more of it.
WAITING_WIDTH = 400
# Always directly follows "attempt.running" for the same step: a line that says nothing new.
HIDDEN_KINDS = frozenset({"step.running"})


class ProgressPrinter:
    """``on_update`` callback for run_flow: prints each event once, in order, and how to
    decide an approval the run starts waiting for."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._last_event_id = 0

    def __enter__(self) -> ProgressPrinter:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

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


class _Interrupts:
    """Counts SIGINT/SIGTERM while a flow runs: the first two become ``KeyboardInterrupt`` in
    the body (cancel the run; then give up waiting for the confirmation), a third exits."""

    def __init__(self) -> None:
        self.count = 0
        self.last = signal.SIGINT.value

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        self.last = signum
        if self.count == 1:
            _say("\ninterrupted: cancelling the run; interrupt again to exit now and leave it "
                 "resumable\n")  # fmt: skip
        elif self.count > 2:
            os._exit(128 + signum)
        raise KeyboardInterrupt


def _say(text: str) -> None:
    # os.write, not print: a signal handler may run while the main thread is printing.
    with contextlib.suppress(OSError):
        os.write(sys.stderr.fileno(), text.encode())


@contextlib.contextmanager
def interrupts_cancel() -> Iterator[_Interrupts]:
    """SIGTERM acts like Ctrl-C while the flow runs (both cancel the run); restored after."""
    handler = _Interrupts()
    if threading.current_thread() is not threading.main_thread():
        yield handler
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield handler
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def finish_lines(outcome: RunOutcome) -> list[str]:
    """The closing lines after a run: state, error (if any) and the audit hint."""
    lines = [f"Run {outcome.flow_run_id} finished: {outcome.state}"]
    error = outcome.error
    if error is not None:
        lines.append(f"  {error.error_class}: {error.type}: {truncate(error.message, 200)}")
    elif outcome.state == "COMPLETED":
        lines += format_result(outcome.result, outcome.flow_run_id)
    lines.append(f"Audit view: meridian runs show {outcome.flow_run_id}")
    return lines


def outcome_to_dict(outcome: RunOutcome) -> dict[str, Any]:
    return {
        "flow_run_id": outcome.flow_run_id,
        "state": outcome.state,
        "result": outcome.result,
        "error": error_to_dict(outcome.error),
    }


def interrupted_lines(run_id: str, state: str, *, abandoned: bool) -> list[str]:
    """What to say after Ctrl-C or SIGTERM: what became of the run, and how to resume it."""
    resume = f"  Resume it with: meridian runs resume {run_id}"
    if abandoned:
        return [
            f"Interrupted again: left run {run_id} as it is. Once its runner lease lapses it is "
            "CRASHED (or CANCELLED once its agents confirm the cancel).",
            resume,
        ]
    if state == "CANCELLED":
        return [f"Interrupted: run {run_id} is CANCELLED (its agents stopped its steps).", resume]
    return [
        f"Interrupted: run {run_id} is {state or 'being cancelled'}: not every agent has "
        f"confirmed yet (see meridian runs show {run_id}).",
        f"  Once it is CANCELLED, resume it with: meridian runs resume {run_id}",
    ]


def run_remote(args: argparse.Namespace, entrypoint: str, raw_params: dict[str, Any]) -> int:
    """Upload the bundle, create a run that waits for a hosted runner, then follow it like
    ``meridian runs watch`` (Ctrl-C stops following; the run goes on)."""
    from meridian.cli.runs import cmd_watch
    from meridian.core.bundle import pack_directory
    from meridian.sdk.loader import load_entrypoint
    from meridian.sdk.params import parse_params as flow_params

    loaded = load_entrypoint(entrypoint)
    params = flow_params(loaded.flow.fn, raw_params)
    bundle = pack_directory(loaded.root)
    with connect(args) as client:
        client.ensure_bundle(bundle)
        run_id = client.create_run(
            loaded.flow.name,
            entrypoint,
            params,
            bundle.sha256,
            "remote",
            runner_target=args.runner_target,
            concurrency=loaded.flow.concurrency,
        )
    print(f"Run {run_id} created; it waits for a hosted flow runner", file=sys.stderr)
    if args.json:
        print(to_json({"flow_run_id": run_id}))
        return 0
    return cmd_watch(argparse.Namespace(**{**vars(args), "run": run_id}))


def cmd_run(args: argparse.Namespace) -> int:
    from meridian.sdk.runner import RunInterrupted, run_flow

    entrypoint = check_entrypoint(args.entrypoint)
    params = with_stored_results(args, parse_params(args.param))  # -p NAME=@result:RUN/STEP
    if args.remote:
        return run_remote(args, entrypoint, params)
    if args.runner_target:
        raise UsageError("--runner-target needs --remote")
    # With --json, stdout carries only the JSON document; progress goes to stderr.
    progress_stream = sys.stderr if args.json else sys.stdout
    view = progress_view(progress_stream, args.progress)
    try:
        with connect(args) as client, interrupts_cancel() as signals, view:
            outcome = run_flow(client, entrypoint, params, on_update=view)
    except RunInterrupted as exc:
        lines = interrupted_lines(exc.run_id, exc.state, abandoned=exc.abandoned)
        print("\n".join(lines), file=progress_stream, flush=True)
        if args.json:
            document = {"flow_run_id": exc.run_id, "state": exc.state, "interrupted": True}
            print(to_json(document))
        return 128 + signals.last
    if args.json:
        print(to_json(outcome_to_dict(outcome)))
    else:
        print("\n".join(finish_lines(outcome)))
    return 0 if outcome.state == "COMPLETED" else 1
