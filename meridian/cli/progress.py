"""A run's progress for people: one compact view, however many steps the run has.

``ProgressState`` folds ``RunUpdate`` events into counts (steps per state, per environment),
a rate, an ETA and the latest notable things (a recovered failure, a waiting reason, a pending
approval); every update costs O(1). Two views render it:

- ``LiveProgress`` (a terminal): a rich ``Live`` region of bounded height, redrawn in place at
  most ``LIVE_FPS`` times a second.
- ``PlainProgress`` (CI logs, pipes, tests): a summary line when the counts changed, at most
  every ``interval_s`` seconds, plus a capped number of lines for what a reader must see (why a
  step waits, a step that failed, how to decide an approval), and a final summary.

Either way a 10,000-step run prints a bounded number of lines (tests/meridian/cli/
test_progress.py). The flow runner hands each view whole batches of updates (``updates``):
one summary line or redraw per batch at most. ``ProgressPrinter`` in ``meridian.cli.run``
keeps the old line-per-event output for ``--progress events``.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, TextIO

from meridian import models
from meridian.cli.render import STEP_STATE_ORDER, format_clock, format_seconds, short_type, truncate
from meridian.core.sealing import mask_sealed

Clock = Callable[[], float]

TERMINAL_STEP_STATES = frozenset({"COMPLETED", "CACHED", "FAILED", "CANCELLED"})
# Step event kind -> the step state it announces.
STEP_KINDS = {
    "step.pending": "PENDING",
    "step.running": "RUNNING",
    "step.completed": "COMPLETED",
    "step.failed": "FAILED",
    "step.cancelled": "CANCELLED",
    "step.cached": "CACHED",
    "step.retrying": "PENDING",
}
ATTEMPT_FAILURES = frozenset({"attempt.failed", "attempt.lost", "attempt.timed_out"})
# "assigned to agent NAME in ENVIRONMENT" (control_plane/usecases/attempts.py): how servers
# without ``RunUpdate.environment`` name the environment.
_ASSIGNED = re.compile(r"assigned to agent (?P<agent>\S+) in (?P<env>\S+)")
DETAIL_WIDTH = 160
MAX_ENVIRONMENTS = 6
LIVE_FPS = 8.0


@dataclass
class Notable:
    """One thing worth a line: which step, what, and when."""

    step_key: str
    text: str
    at: Any = None


@dataclass
class ProgressState:
    """Counts and the latest notable things of one run, folded from its updates."""

    clock: Clock = time.monotonic
    step_state: dict[str, str] = field(default_factory=dict)
    step_env: dict[str, str] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    env_counts: dict[str, Counter[str]] = field(default_factory=dict)
    failed_attempt: dict[str, str] = field(default_factory=dict)
    recovered: Notable | None = None
    failed: Notable | None = None
    waiting: Notable | None = None
    approval: models.ApprovalInfo | None = None
    run_state: str = ""
    started: float | None = None
    done_at_start: int = 0
    last_event_id: int = 0

    # ---- folding ----------------------------------------------------------------------------

    def seed(self, detail: models.RunDetail) -> None:
        """Start from a stored run (``runs watch``): its steps' states and environments."""
        for step in detail.steps:
            env = next((a.environment for a in reversed(step.attempts) if a.environment), "")
            if env:
                self._set_env(step.key, env)
            self._set_state(step.key, step.state)
        self.done_at_start = self.done
        self.last_event_id = max((e.event_id for e in detail.events), default=0)
        pending = [a for a in detail.approvals if a.state == "pending"]
        self.approval = pending[-1] if pending else None

    def apply(self, update: models.RunUpdate) -> bool:
        """Fold one update in; False for one seen already (a re-watch replays the boundary)."""
        if update.event_id and update.event_id <= self.last_event_id:
            return False
        self.last_event_id = max(self.last_event_id, update.event_id)
        if self.started is None:
            self.started = self.clock()
        key, kind = update.step_key, update.kind
        if kind == "attempt.assigned" and key:
            # Older servers name the environment only in the message.
            found = _ASSIGNED.search(update.message)
            env = update.environment or (found.group("env") if found else "")
            if env:
                self._set_env(key, env)
        elif kind == "attempt.queued" and key and key not in self.step_state:
            self._set_state(key, "PENDING")
        elif kind in ATTEMPT_FAILURES and key:
            self.failed_attempt[key] = _detail(update)
        elif kind == "attempt.waiting":
            self.waiting = Notable(key, mask_sealed(update.message), update.at)
        elif (
            kind == "attempt.running" and self.waiting is not None and self.waiting.step_key == key
        ):
            self.waiting = None  # that step waits no longer
        if kind in STEP_KINDS and key:
            self._step_moved(key, STEP_KINDS[kind], update)
        elif update.step_outcome is not None and key:
            self._step_moved(key, update.step_outcome.state, update)
        if update.approval is not None:
            self.approval = None if update.approval.decided else update.approval
        if update.run_state:
            self.run_state = update.run_state
        return True

    def _step_moved(self, key: str, state: str, update: models.RunUpdate) -> None:
        self._set_state(key, state)
        if state == "COMPLETED" and key in self.failed_attempt:
            self.recovered = Notable(key, self.failed_attempt.pop(key), update.at)
        elif state == "FAILED":
            self.failed = Notable(key, _detail(update), update.at)

    def _set_state(self, key: str, state: str) -> None:
        old = self.step_state.get(key)
        if old == state:
            return
        env = self.step_env.get(key)
        if old is not None:
            self.counts[old] -= 1
            if env is not None:
                self.env_counts[env][old] -= 1
        self.step_state[key] = state
        self.counts[state] += 1
        if env is not None:
            self.env_counts[env][state] += 1

    def _set_env(self, key: str, env: str) -> None:
        old, state = self.step_env.get(key), self.step_state.get(key)
        if old == env:
            return
        if old is not None and state is not None:
            self.env_counts[old][state] -= 1
        self.step_env[key] = env
        if state is not None:
            self.env_counts.setdefault(env, Counter())[state] += 1
        else:
            self.env_counts.setdefault(env, Counter())

    # ---- derived figures --------------------------------------------------------------------

    @property
    def total(self) -> int:
        return len(self.step_state)

    @property
    def done(self) -> int:
        return sum(self.counts[s] for s in TERMINAL_STEP_STATES)

    def rate(self) -> float | None:
        """Steps finished per second since this view started (None until one finished)."""
        if self.started is None:
            return None
        elapsed = self.clock() - self.started
        finished = self.done - self.done_at_start
        if elapsed <= 0 or finished <= 0:
            return None
        return finished / elapsed

    def eta_s(self) -> float | None:
        """Seconds until the steps submitted so far are done, at the current rate."""
        rate = self.rate()
        if rate is None:
            return None
        return (self.total - self.done) / rate

    def state_counts(self) -> list[tuple[str, int]]:
        return _ordered(self.counts)

    def environments(self) -> list[tuple[str, list[tuple[str, int]]]]:
        """The busiest environments first (by steps seen there), at most MAX_ENVIRONMENTS."""
        busiest = sorted(self.env_counts.items(), key=lambda item: (-item[1].total(), item[0]))
        return [(env, _ordered(c)) for env, c in busiest[:MAX_ENVIRONMENTS]]

    def summary(self) -> str:
        """One line: done/total, counts per state, rate, ETA and the busiest environments."""
        parts = [f"{self.done}/{self.total} steps done"]
        counts = ", ".join(f"{n} {s}" for s, n in self.state_counts())
        if counts:
            parts.append(counts)
        rate = self.rate()
        if rate is not None:
            parts.append(f"{rate:.1f} steps/s")
        eta = self.eta_s()
        if eta is not None and self.done < self.total:
            parts.append(f"ETA {format_seconds(eta)}")
        envs = "; ".join(f"{env}: {_short_counts(c)}" for env, c in self.environments()[:3])
        if envs:
            parts.append(envs)
        return truncate(" · ".join(parts), 240)


def _ordered(counts: Counter[str]) -> list[tuple[str, int]]:
    known = [(s, counts[s]) for s in STEP_STATE_ORDER if counts[s] > 0]
    others = [(s, n) for s, n in sorted(counts.items()) if n > 0 and s not in STEP_STATE_ORDER]
    return known + others


def _short_counts(counts: Iterable[tuple[str, int]]) -> str:
    return " ".join(f"{n} {s.lower()}" for s, n in counts) or "-"


def _detail(update: models.RunUpdate) -> str:
    outcome = update.step_outcome
    if outcome is not None and outcome.error is not None:
        error = outcome.error
        text = f"{error.error_class}: {short_type(error.type)}: {error.message}"
    else:
        text = update.message
    return mask_sealed(text)


# ---- the views -------------------------------------------------------------------------------


class ProgressView(Protocol):
    """What ``meridian run`` and ``runs watch`` hand updates to; a context manager."""

    state: ProgressState

    def __call__(self, update: models.RunUpdate) -> None: ...

    def __enter__(self) -> ProgressView: ...

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


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


class _Notices:
    """The capped lines a reader must see, whatever the view: why steps wait (distinct
    reasons), steps that failed, approvals to decide. Each kind stops after its cap with one
    line saying where the rest is."""

    CAPS = {"waiting": 20, "failed": 10, "approval": 5}

    def __init__(self) -> None:
        self.shown: Counter[str] = Counter()
        self.seen_reasons: set[str] = set()

    def lines(self, update: models.RunUpdate) -> list[str]:
        kind = update.kind
        if kind == "attempt.waiting":
            if update.message in self.seen_reasons:
                return []
            self.seen_reasons.add(update.message)
            return self._capped("waiting", [_event_line(update, 400)])
        if kind == "step.failed" or (
            update.step_outcome is not None and update.step_outcome.state == "FAILED"
        ):
            return self._capped("failed", [_event_line(update, DETAIL_WIDTH)])
        approval = update.approval
        if kind == "approval.requested" and approval is not None and not approval.decided:
            return self._capped("approval", [_event_line(update, DETAIL_WIDTH),
                                             *approval_hint(approval)])  # fmt: skip
        return []

    def _capped(self, what: str, lines: list[str]) -> list[str]:
        self.shown[what] += 1
        cap = self.CAPS[what]
        if self.shown[what] <= cap:
            return lines
        if self.shown[what] == cap + 1:
            return [f"  ... more {what} lines not shown: see `meridian runs show RUN`"]
        return []


def _event_line(update: models.RunUpdate, width: int) -> str:
    what = update.kind
    line = f"{format_clock(update.at)}  {truncate(update.step_key or '-', 40):<20} {what:<18}"
    return f"{line} {truncate(_detail(update), width)}".rstrip()


class PlainProgress:
    """Bounded progress for a log: throttled summary lines and capped notices."""

    def __init__(
        self, stream: TextIO, *, interval_s: float = 5.0, clock: Clock = time.monotonic
    ) -> None:
        self.state = ProgressState(clock=clock)
        self._stream = stream
        self._interval_s = interval_s
        self._clock = clock
        self._notices = _Notices()
        self._last_line_at: float | None = None
        self._last_counts: list[tuple[str, int]] = []

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __call__(self, update: models.RunUpdate) -> None:
        self.updates([update])

    def updates(self, batch: Sequence[models.RunUpdate]) -> None:
        """Fold a batch in, then print its notices and at most one summary line."""
        lines: list[str] = []
        last: models.RunUpdate | None = None
        seeded = self.state.total > 0  # before the first batch: ``runs watch`` seeded it
        for update in batch:
            if self.state.apply(update):
                lines.extend(self._notices.lines(update))
                last = update
        if last is None:
            return
        now = self._clock()
        if self._last_line_at is None:
            # A fresh run's first updates are its submissions, arriving page by page: its
            # first line waits one interval so that it counts them all. A seeded view knows
            # its counts already and prints at once.
            self._last_line_at = now - self._interval_s if seeded else now
        counts = self.state.state_counts()
        due = now - self._last_line_at >= self._interval_s
        if last.run_state or (counts != self._last_counts and due):
            self._last_line_at, self._last_counts = now, counts
            prefix = f"run {last.run_state}: " if last.run_state else ""
            lines.append(f"{format_clock(last.at)}  progress  {prefix}{self.state.summary()}")
        if lines:
            print("\n".join(lines), file=self._stream, flush=True)


class LiveProgress:
    """A rich ``Live`` region of bounded height, redrawn in place (a terminal)."""

    def __init__(self, console: Any, *, fps: float = LIVE_FPS, clock: Clock = time.monotonic):
        from rich.live import Live

        self.state = ProgressState(clock=clock)
        self._console = console
        self._clock = clock
        self._min_gap_s = 1.0 / fps
        self._last_draw: float | None = None
        self._notices = _Notices()
        self._live = Live(console=console, auto_refresh=False, transient=False,
                          redirect_stdout=False, redirect_stderr=False)  # fmt: skip

    def __enter__(self) -> LiveProgress:
        self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.update(self.render(), refresh=True)
        self._live.stop()

    def __call__(self, update: models.RunUpdate) -> None:
        self.updates([update])

    def updates(self, batch: Sequence[models.RunUpdate]) -> None:
        """Fold a batch in, print its notices and redraw at most once."""
        ended = False
        for update in batch:
            if not self.state.apply(update):
                continue
            ended = ended or bool(update.run_state)
            for line in self._notices.lines(update):
                self._live.console.print(line, markup=False, highlight=False,
                                         overflow="ellipsis", no_wrap=True)  # fmt: skip
        now = self._clock()
        if ended or self._last_draw is None or now - self._last_draw >= self._min_gap_s:
            self._last_draw = now
            self._live.update(self.render(), refresh=True)

    def render(self) -> Any:
        """The live region: at most 5 + MAX_ENVIRONMENTS + 1 lines, none wrapped."""
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        state = self.state
        grid = Table.grid(padding=(0, 1), expand=True)
        grid.add_column(style="bold", no_wrap=True, min_width=10, max_width=24)
        grid.add_column(no_wrap=True, overflow="ellipsis", ratio=1)
        bar = ProgressBar(total=max(state.total, 1), completed=state.done, width=30)
        figures = [f"{state.done}/{state.total} done"]
        rate = state.rate()
        if rate is not None:
            figures.append(f"{rate:.1f}/s")
        eta = state.eta_s()
        if eta is not None and state.done < state.total:
            figures.append(f"ETA {format_seconds(eta)}")
        steps = Table.grid(padding=(0, 1))
        steps.add_row(bar, Text("  ".join(figures), no_wrap=True, overflow="ellipsis"))
        grid.add_row("Steps", steps)
        counts = "  ".join(f"{s} {n}" for s, n in state.state_counts()) or "-"
        grid.add_row("States", Text(counts))
        envs = state.environments()
        for env, env_counts in envs:
            grid.add_row(Text(truncate(env, 24)), Text(_short_counts(env_counts)))
        hidden = len(state.env_counts) - len(envs)
        if hidden > 0:
            grid.add_row("", Text(f"+{hidden} more environments"))
        for label, notable in (("Recovered", state.recovered), ("Waiting", state.waiting),
                               ("Failed", state.failed)):  # fmt: skip
            if notable is not None:
                text = f"{truncate(notable.step_key, 40)}: {truncate(notable.text, DETAIL_WIDTH)}"
                grid.add_row(label, Text(text))
        if state.approval is not None:
            grid.add_row("Approval", Text(f"{state.approval.key} waits for a decision"))
        return grid


def progress_view(
    stream: TextIO, mode: str = "auto", *, clock: Clock = time.monotonic
) -> ProgressView | Any:
    """The view for ``mode`` (auto: live on a terminal, plain otherwise; events: a line per
    event, the pre-0.2 output)."""
    if mode == "events":
        from meridian.cli.run import ProgressPrinter

        return ProgressPrinter(stream)
    tty = bool(getattr(stream, "isatty", lambda: False)())
    if mode == "live" or (mode == "auto" and tty):
        from rich.console import Console

        return LiveProgress(Console(file=stream, force_terminal=mode == "live" or None),
                            clock=clock)  # fmt: skip
    return PlainProgress(stream, clock=clock)
