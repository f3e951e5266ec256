"""``meridian runs logs RUN [--step S] [--level L] [--follow]``: a run's step output.

Lines come from ``GetLogs`` a page at a time (``after_id`` continues where the last page
ended). Each line carries the stream it came from, which ``--level`` ranks as a level:

* ``debug``: DEBUG (a ``meridian.get_logger()`` record; records are named after their level)
* ``stdout``, ``info``: INFO
* ``agent``, ``warning``: WARNING (the agent's notes about the step's output, e.g. lines it
  had to drop, count as warnings)
* ``stderr``, ``error``: ERROR (what a step wrote to stderr counts as trouble)
* ``critical``: CRITICAL

``--level L`` shows the lines at L or above (default ``info``: every line but debug records).
A stream this version does not know counts as INFO.

``--follow`` keeps printing new lines until the run ends: a ``WatchRun`` stream in a
background thread says when it ended (the stream closes with the run's final state), while
the main thread polls ``GetLogs`` at most every ``FOLLOW_POLL_S`` (woken early by the end),
then drains what is left. The filter runs here: the wire has no level field, the stream is it.
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, Protocol

from meridian import models
from meridian.cli.common import add_client_options, connect, positive_float
from meridian.cli.render import format_clock, truncate
from meridian.core.errors import ConnectionFailed, MeridianError

LOG_PAGE = 5000
FOLLOW_POLL_S = 1.0
LINE_WIDTH = 4000  # one log line is printed whole up to this many characters
LEVELS: dict[str, int] = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
# The level of each stream: plain output by where it was written, get_logger() records by name.
STREAM_LEVELS: dict[str, int] = {**LEVELS, "stdout": 20, "agent": 30, "stderr": 40}
TERMINAL_RUN_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "CRASHED"})


def register(actions: Any, parents: list[argparse.ArgumentParser]) -> None:
    logs = actions.add_parser(
        "logs", help="the step logs of one run (--follow: until it ends)", parents=parents
    )
    logs.add_argument("run", metavar="RUN", help="run id or a unique prefix of it")
    logs.add_argument("--step", metavar="NAME_OR_KEY", default="",
                      help="only this step (a key like load#1, or a step name)")  # fmt: skip
    logs.add_argument(
        "--level",
        choices=tuple(LEVELS),
        default="info",
        help="the lowest level shown (default info: all but debug records); stdout counts as "
        "info, agent notes as warning, stderr as error",
    )
    logs.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new lines until the run ends"
    )
    logs.add_argument("--poll", metavar="SECONDS", type=positive_float, default=FOLLOW_POLL_S,
                      help=f"with --follow: how often to ask for new lines (default "
                      f"{FOLLOW_POLL_S:g})")  # fmt: skip
    add_client_options(logs)
    logs.set_defaults(func=cmd_logs)


class LogsClient(Protocol):
    def get_run(self, run_id_or_prefix: str) -> models.RunDetail: ...

    def get_logs(
        self, run_id: str, step_key: str = "", after_id: int = 0, limit: int = 10000
    ) -> models.LogPage: ...

    def watch_run(
        self, flow_run_id: str, after_event_id: int = 0
    ) -> Iterator[models.RunUpdate]: ...


def format_log_line(entry: models.StepLogLine) -> str:
    line = entry.line
    at: datetime | None = line.at if line is not None else None
    stream = line.stream if line is not None else ""
    text = line.text if line is not None else ""
    prefix = f"{format_clock(at)} {entry.step_key} #{entry.attempt_number} {stream:<6} | "
    return prefix + (text if len(text) <= LINE_WIDTH else truncate(text, LINE_WIDTH))


def shown_at(level: str) -> Callable[[models.StepLogLine], bool]:
    """The filter for ``--level``; a line without a stream counts as stdout."""
    lowest = LEVELS[level]

    def keep(entry: models.StepLogLine) -> bool:
        stream = entry.line.stream if entry.line is not None else "stdout"
        return STREAM_LEVELS.get(stream, LEVELS["info"]) >= lowest

    return keep


class LogReader:
    """Pages through a run's log lines after ``after_id``; prints those the filter keeps."""

    def __init__(
        self,
        client: LogsClient,
        run_id: str,
        step: str,
        keep: Callable[[models.StepLogLine], bool],
        out: Callable[[str], None],
    ) -> None:
        self._client, self._run_id, self._step = client, run_id, step
        self._keep, self._out = keep, out
        self.after_id = 0
        self.printed = 0

    def drain(self) -> None:
        """Print every line stored now after ``after_id``."""
        while True:
            page = self._client.get_logs(
                self._run_id, step_key=self._step, after_id=self.after_id, limit=LOG_PAGE
            )
            fresh = [e for e in page.lines if e.id > self.after_id or not e.id]
            for entry in fresh:
                if self._keep(entry):
                    self._out(format_log_line(entry))
                    self.printed += 1
            if not fresh or page.next_after_id <= self.after_id:
                return
            self.after_id = page.next_after_id


class RunEnd:
    """Watches a run in a background thread; ``ended`` is set once its final state arrived
    (or watching failed: ``failed`` then says why, and the caller polls the state)."""

    def __init__(self, client: LogsClient, run_id: str, after_event_id: int) -> None:
        self.ended = threading.Event()
        self.state = ""
        self.failed: MeridianError | None = None
        self._stream: Iterator[models.RunUpdate] | None = None
        self._client, self._run_id, self._after = client, run_id, after_event_id
        self._thread = threading.Thread(target=self._run, name="meridian-logs-follow",
                                        daemon=True)  # fmt: skip

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        cancel = getattr(self._stream, "cancel", None)
        if cancel is not None:
            cancel()

    def _run(self) -> None:
        try:
            self._stream = self._client.watch_run(self._run_id, self._after)
            for update in self._stream:
                if update.run_state:
                    self.state = update.run_state
                    break
            if not self.state:
                self.failed = ConnectionFailed("the watch stream ended before the run did")
        except MeridianError as exc:
            self.failed = exc
        finally:
            self.ended.set()


def follow(reader: LogReader, client: LogsClient, detail: models.RunDetail, poll_s: float) -> str:
    """Print lines until the run has ended and every line is out; returns its final state."""
    reader.drain()
    if detail.state in TERMINAL_RUN_STATES:
        return detail.state
    last_event = max((e.event_id for e in detail.events), default=0)
    end = RunEnd(client, detail.flow_run_id, last_event)
    end.start()
    pause = threading.Event()  # never set: a bounded wait between polls
    try:
        while True:
            ended = end.ended.wait(poll_s) if end.failed is None else pause.wait(poll_s)
            state = end.state
            if end.failed is not None:
                # No watch stream (it broke, or an old server): ask for the state instead.
                state = client.get_run(detail.flow_run_id).state
                ended = state in TERMINAL_RUN_STATES
            reader.drain()
            if ended:
                return state
    finally:
        end.stop()


def cmd_logs(args: argparse.Namespace) -> int:
    def out(line: str) -> None:
        print(line, flush=args.follow)

    with connect(args) as client:
        # Resolve a prefix to the full id first so logs accept what `runs show` accepts.
        detail = client.get_run(args.run)
        reader = LogReader(client, detail.flow_run_id, args.step, shown_at(args.level), out)
        if args.follow:
            try:
                state = follow(reader, client, detail, args.poll)
            except KeyboardInterrupt:
                return 130
            print(f"run {detail.flow_run_id} ended: {state}", file=sys.stderr)
        else:
            reader.drain()
    if reader.printed == 0:
        suffix = f" for step {args.step!r}" if args.step else ""
        level = f" at level {args.level}" if args.level != "info" else ""
        print(f"no log lines{suffix}{level}", file=sys.stderr)
    return 0
