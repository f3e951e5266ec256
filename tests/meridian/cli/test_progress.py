"""The progress view: counts, rate, ETA and notices folded from RunUpdates, and a bounded
number of output lines for a 10,000-step run in both the plain and the terminal views."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from rich.console import Console

from meridian import models
from meridian.cli.progress import LiveProgress, PlainProgress, ProgressState, progress_view

NOW = datetime(2024, 6, 1, 12, 0, 0, tzinfo=UTC)
ENVS = ("aws-prod", "gcp-prod", "onprem", "hpc")
STEPS = 10_000


class FakeClock:
    """Advances by ``step`` seconds every time it is read: a run that takes its time."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def big_run(n: int = STEPS) -> Iterator[models.RunUpdate]:
    """A synthetic map of ``n`` steps over four environments: queued, assigned, running,
    done; every 50th fails once and is retried (recovered), every 500th fails for good, and
    300 distinct waiting reasons. About four updates per step."""
    ids = iter(range(1, 10 * n))

    def update(kind: str, key: str = "", **extra: object) -> models.RunUpdate:
        return models.RunUpdate(next(ids), NOW, kind, key, **extra)  # type: ignore[arg-type]

    keys = [f"work#{i}" for i in range(1, n + 1)]
    for i, key in enumerate(keys):
        yield update("attempt.queued", key)
        if i < 300:
            yield update("attempt.waiting", key, message=f"no free slot in pool {i}")
    for i, key in enumerate(keys):
        env = ENVS[i % len(ENVS)]
        yield update("attempt.assigned", key, message=f"assigned to agent {env}-1 in {env}")
        yield update("attempt.running", key)
        if i % 50 == 0:
            yield update("attempt.failed", key, message="transient: ConnectionError: reset")
            yield update("step.retrying", key)
        if i % 500 == 7:
            error = models.ErrorInfo("permanent", "builtins.ValueError", "bad row " * 40)
            outcome = models.StepOutcome(f"sr{i}", key, "FAILED", error=error)
            yield update("step.failed", key, step_outcome=outcome)
        else:
            outcome = models.StepOutcome(f"sr{i}", key, "COMPLETED", result_json="1")
            yield update("step.completed", key, step_outcome=outcome)
    yield update("run.failed", run_state="FAILED")


def test_state_counts_environments_and_notables() -> None:
    state = ProgressState(clock=FakeClock(0.01))
    updates = big_run(1000)
    for update in updates:
        state.apply(update)
        if update.kind == "attempt.assigned":
            break  # every step is queued, none runs yet
    assert state.waiting is not None and "pool 299" in state.waiting.text
    assert dict(state.state_counts()) == {"PENDING": 1000} and state.eta_s() is None
    for update in updates:
        state.apply(update)
    assert state.total == 1000 and state.done == 1000
    assert dict(state.state_counts()) == {"COMPLETED": 998, "FAILED": 2}
    envs = dict(state.environments())
    assert set(envs) == set(ENVS)
    assert sum(n for counts in envs.values() for _, n in counts) == 1000
    assert state.recovered is not None and "reset" in state.recovered.text
    assert state.failed is not None and state.failed.step_key == "work#508"
    assert state.waiting is None  # the step that waited runs now
    assert state.run_state == "FAILED"
    assert state.rate() is not None


def test_replayed_updates_are_ignored() -> None:
    state = ProgressState(clock=FakeClock(0.01))
    first = models.RunUpdate(5, NOW, "attempt.queued", "a#1")
    assert state.apply(first)
    assert not state.apply(first)
    assert state.total == 1


def test_eta_and_rate_follow_the_clock() -> None:
    clock = FakeClock(0.0)
    state = ProgressState(clock=clock)
    for i in range(1, 11):
        state.apply(models.RunUpdate(i, NOW, "attempt.queued", f"s#{i}"))
    for i in range(1, 6):
        outcome = models.StepOutcome("sr", f"s#{i}", "COMPLETED")
        state.apply(models.RunUpdate(10 + i, NOW, "step.completed", f"s#{i}", step_outcome=outcome))
    clock.now = 10.0  # 5 done in 10 s: 0.5/s, 5 to go: 10 s
    assert state.rate() == pytest.approx(0.5)
    assert state.eta_s() == pytest.approx(10.0)
    assert "5/10 steps done" in state.summary() and "ETA 10.0s" in state.summary()


def test_plain_view_prints_a_bounded_number_of_lines_for_10k_steps() -> None:
    out = io.StringIO()
    updates = 0
    # 0.002 s per clock read: the synthetic run "takes" about two minutes.
    with PlainProgress(out, interval_s=5.0, clock=FakeClock(0.002)) as view:
        for update in big_run():
            view(update)
            updates += 1
    lines = out.getvalue().splitlines()
    assert updates > 40_000
    # Summary lines: at most one per 5 s (~2 min) plus the final one; notices are capped
    # (20 waiting, 10 failed, one "more ..." line each).
    assert len(lines) <= 80, "\n".join(lines)
    assert sum("progress" in line for line in lines) <= 40
    assert len([line for line in lines if "attempt.waiting" in line]) == 20
    assert len([line for line in lines if "step.failed" in line]) == 10
    assert sum("more waiting lines" in line for line in lines) == 1
    assert all(len(line) <= 500 for line in lines)
    assert "run FAILED" in lines[-1] and f"{STEPS}/{STEPS} steps done" in lines[-1]
    assert "9980 COMPLETED, 20 FAILED" in lines[-1]


def test_plain_view_keeps_the_approval_hint() -> None:
    out = io.StringIO()
    approval = models.ApprovalInfo(
        flow_run_id="run-1", key="deploy#1", state="pending", message="ship it?"
    )
    view = PlainProgress(out, clock=FakeClock(0.01))
    view(models.RunUpdate(1, NOW, "approval.requested", "deploy#1", approval=approval))
    assert "meridian runs approve run-1 deploy#1" in out.getvalue()


class Screen:
    """A tiny terminal: applies text, CR, LF and the CSI codes rich's Live uses (cursor up,
    erase line, cursor show/hide), so a test sees what a person would see at the end."""

    CSI = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])")

    def __init__(self) -> None:
        self.lines: list[str] = [""]
        self.row = 0

    def feed(self, data: str) -> Screen:
        position = 0
        for match in self.CSI.finditer(data):
            self._text(data[position : match.start()])
            argument, code = match.groups()
            if code == "A":
                self.row = max(0, self.row - int(argument or 1))
            elif code == "K":
                self.lines[self.row] = ""
            position = match.end()
        self._text(data[position:])
        return self

    def _text(self, text: str) -> None:
        for char in text:
            if char == "\n":
                self.row += 1
                if self.row == len(self.lines):
                    self.lines.append("")
            elif char == "\r":
                self.lines[self.row] = ""
            else:
                self.lines[self.row] += char


def test_terminal_view_redraws_in_place_for_10k_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm-256color")
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120, color_system=None)
    view = LiveProgress(console, fps=8.0, clock=FakeClock(0.002))
    updates = 0
    with view:
        for update in big_run():
            view(update)
            updates += 1
    assert updates > 40_000
    raw = out.getvalue()
    assert "\x1b[1A" in raw and "\x1b[2K" in raw  # the region moves up and is redrawn
    screen = Screen().feed(raw)
    visible = [line for line in screen.lines if line.strip()]
    # What stays on screen: capped notices (20 waiting + 10 failed + 2 "more") and one live
    # region of bounded height, however many updates there were.
    assert len(visible) <= 32 + 12, "\n".join(visible)
    region = "\n".join(visible[-12:])
    assert "10000/10000 done" in region
    assert "COMPLETED 9980" in region and "FAILED 20" in region
    for env in ENVS:
        assert env in region
    assert "Recovered" in region and "Failed" in region
    # Redraws are throttled (8 a second of a run of a few minutes), not one per update: each
    # redraw starts with a carriage return.
    assert raw.count("\r") <= 2000


def test_auto_mode_picks_plain_for_a_pipe_and_live_for_a_terminal() -> None:
    assert isinstance(progress_view(io.StringIO()), PlainProgress)

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert isinstance(progress_view(Tty()), LiveProgress)
    assert type(progress_view(io.StringIO(), "events")).__name__ == "ProgressPrinter"


def test_plain_view_takes_batches_and_counts_a_whole_submission_in_its_first_line() -> None:
    out = io.StringIO()
    clock = FakeClock(0.0)
    view = PlainProgress(out, interval_s=5.0, clock=clock)
    updates = list(big_run(2_000))
    # The submissions stream in page by page: no summary line yet, not even "0/1000".
    view.updates(updates[:1000])
    view.updates(updates[1000:2000])
    assert "progress" not in out.getvalue()
    clock.now += 5.0
    view.updates(updates[2000:3000])  # one interval later: one line, every step counted
    summaries = [line for line in out.getvalue().splitlines() if "progress" in line]
    assert len(summaries) == 1 and "/2000 steps done" in summaries[0]
    view.updates(updates[3000:])  # the rest at once: one more line, the run's end
    summaries = [line for line in out.getvalue().splitlines() if "progress" in line]
    assert len(summaries) == 2 and "run FAILED: 2000/2000 steps done" in summaries[1]


def test_terminal_view_redraws_once_per_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm-256color")
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120, color_system=None)
    # A redraw would be due at every update (8,000 of them): only the batches limit them.
    view = LiveProgress(console, fps=1000.0, clock=FakeClock(0.01))
    updates = list(big_run(2_000))
    pages = [updates[i : i + 500] for i in range(0, len(updates), 500)]
    with view:
        for page in pages:
            view.updates(page)
    region = Screen().feed(out.getvalue()).lines
    assert any("2000/2000 done" in line for line in region)
    # One region per batch, plus one per notice printed above it (rich redraws the region
    # under a printed line): 17 batches, 20 waiting, 4 failed, the "more" line, the last.
    assert out.getvalue().count("Steps") <= len(pages) + 20 + 4 + 1 + 1
