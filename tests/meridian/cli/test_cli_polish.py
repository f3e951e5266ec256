"""Issue 14's CLI items: natural step order, results shown (bounded), ``runs logs --follow``
and ``--level``, ``runs watch``, shell completion, the ``join-tokens`` name and its alias, and
help that says where each command acts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from meridian import models
from meridian.cli import logs as logs_cmd
from meridian.cli import render
from meridian.cli import runs as runs_cmd
from meridian.cli.main import build_parser
from meridian.cli.run import finish_lines
from protos.meridian.v1 import control_pb2
from tests.support.deadlines import DEADLINE_S
from tests.support.polling import poll_until

NOW = datetime(2024, 6, 1, 12, 0, 0, tzinfo=UTC)


def step(key: str, created: float = 0.0) -> models.StepRunDetail:
    return models.StepRunDetail(
        step_run_id=f"sr-{key}", key=key, name=key.split("#")[0], state="COMPLETED",
        target="", provider="process", inputs_digest="", result_json="1", error=None,
        created_at=NOW + timedelta(seconds=created), ended_at=None, attempts=(),
    )  # fmt: skip


def run_detail(*steps: models.StepRunDetail, result_json: str = "", state: str = "COMPLETED"):
    return models.RunDetail(
        flow_run_id="run-1-full", flow_name="etl", entrypoint="flows.py:etl", trigger="manual",
        parameters_json="{}", bundle_sha256="", state=state, created_at=NOW,
        result_json=result_json, steps=steps,
    )  # fmt: skip


# ---- runs show: natural order and the result -------------------------------------------------


def test_natural_key_orders_numbers_by_value() -> None:
    keys = ["map#10", "map#2", "map#1", "load#1", "map#100", "a10b2", "a10b10", "a9"]
    assert sorted(keys, key=render.natural_key) == [
        *("a9", "a10b2", "a10b10", "load#1", "map#1", "map#2", "map#10", "map#100"),
    ]


def test_runs_show_orders_a_maps_keys_naturally_and_keeps_submission_order() -> None:
    # The store returns steps by (created_at, key text): a map's items tie on created_at.
    steps = [step("extract#1", 0), *(step(f"map#{i}", 1) for i in (1, 10, 11, 2, 3)),
             step("load#1", 2)]  # fmt: skip
    text = render.render_run(run_detail(*steps))
    timeline = text.split("Timeline (times UTC)")[1].split("Steps:")[0].splitlines()[2:]
    keys = [line.split()[0] for line in timeline if line.strip()]
    assert keys == ["extract#1", "map#1", "map#2", "map#3", "map#10", "map#11", "load#1"]
    document = render.run_to_dict(run_detail(*steps))
    assert [s["key"] for s in document["steps"]] == keys


def test_runs_show_prints_the_result() -> None:
    text = render.render_run(run_detail(result_json='{"total": 14, "squares": [0, 1, 4, 9]}'))
    assert 'Result      {"squares": [0, 1, 4, 9], "total": 14}' in text.splitlines()


def test_a_long_result_is_truncated_with_a_note() -> None:
    big = json.dumps({"rows": list(range(5000))})
    lines = render.render_run(run_detail(result_json=big)).splitlines()
    (result,) = [line for line in lines if line.startswith("Result")]
    assert result.endswith("…") and len(result) <= render.RESULT_WIDTH + 20
    note = lines[lines.index(result) + 1]
    assert "truncated" in note and "meridian runs show run-1-full --json" in note
    assert render.render_run(run_detail()).splitlines().count("Result      -") == 1


def test_meridian_run_finish_lines_print_the_result() -> None:
    outcome = SimpleNamespace(flow_run_id="run-9", state="COMPLETED", result={"n": 1}, error=None)
    assert finish_lines(outcome)[1] == 'Result: {"n": 1}'  # type: ignore[arg-type]
    long = SimpleNamespace(flow_run_id="run-9", state="COMPLETED", result="x" * 9000, error=None)
    lines = finish_lines(long)  # type: ignore[arg-type]
    assert len(lines[1]) <= render.RESULT_WIDTH + 10 and "truncated: 9002 characters" in lines[2]


# ---- runs logs: --level and --follow ---------------------------------------------------------


def entry(n: int, stream: str, text: str) -> models.StepLogLine:
    return models.StepLogLine(n, "load#1", 1, models.LogLine(NOW, stream, text))


class LogClient:
    """Serves log lines in pages; the run ends after ``end_after`` polls (``--follow``)."""

    def __init__(self, lines: list[models.StepLogLine], *, end_after: int = 0) -> None:
        self.lines = lines
        self.polls = 0
        self.end_after = end_after
        self.state = "RUNNING" if end_after else "COMPLETED"
        self.ended = threading.Event()

    def __enter__(self) -> LogClient:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def get_run(self, run_id: str) -> models.RunDetail:
        return run_detail(state=self.state)

    def get_logs(self, run_id: str, step_key: str = "", after_id: int = 0, limit: int = 0):
        self.polls += 1
        if self.end_after and self.polls == self.end_after:
            self.lines.append(entry(len(self.lines) + 1, "stdout", f"line at poll {self.polls}"))
            self.state = "COMPLETED"
            self.ended.set()
        fresh = tuple(e for e in self.lines if e.id > after_id)[:2]  # small pages
        return models.LogPage(fresh, fresh[-1].id if fresh else after_id)

    def watch_run(self, run_id: str, after_event_id: int = 0) -> Iterator[models.RunUpdate]:
        self.ended.wait(DEADLINE_S)
        yield models.RunUpdate(99, NOW, "run.completed", run_state="COMPLETED")


@pytest.fixture
def lines() -> list[models.StepLogLine]:
    return [entry(1, "stdout", "reading"), entry(2, "stderr", "warning: slow disk"),
            entry(3, "agent", "... 5 lines dropped ..."), entry(4, "stdout", "done")]  # fmt: skip


@pytest.mark.parametrize(
    ("level", "expected"),
    [("info", ["reading", "slow disk", "dropped", "done"]),
     ("warning", ["slow disk", "dropped"]), ("error", ["slow disk"])],
)  # fmt: skip
def test_logs_level_filters_by_stream(cli, monkeypatch, lines, level, expected) -> None:
    monkeypatch.setattr(logs_cmd, "connect", lambda args: LogClient(lines))
    result = cli("runs", "logs", "run-1", "--level", level)
    assert result.code == 0
    shown = result.out.splitlines()
    assert len(shown) == len(expected)
    assert all(word in line for word, line in zip(expected, shown, strict=True))


@pytest.mark.parametrize(
    ("level", "expected"),
    [("debug", ["d", "i", "out", "w", "note", "e", "err", "c", "odd"]),
     ("info", ["i", "out", "w", "note", "e", "err", "c", "odd"]),
     ("warning", ["w", "note", "e", "err", "c"]), ("error", ["e", "err", "c"]),
     ("critical", ["c"])],
)  # fmt: skip
def test_logs_level_ranks_get_logger_records_with_plain_streams(
    cli, monkeypatch, level, expected
) -> None:
    streams = ["debug", "info", "stdout", "warning", "agent", "error", "stderr", "critical",
               "future"]  # fmt: skip
    texts = ["d", "i", "out", "w", "note", "e", "err", "c", "odd"]
    lines = [entry(n, s, t) for n, (s, t) in enumerate(zip(streams, texts, strict=True), 1)]
    monkeypatch.setattr(logs_cmd, "connect", lambda args: LogClient(lines))
    result = cli("runs", "logs", "run-1", "--level", level)
    assert [line.rsplit("| ", 1)[1] for line in result.out.splitlines()] == expected


def test_logs_level_with_nothing_to_show_says_so(cli, monkeypatch) -> None:
    monkeypatch.setattr(logs_cmd, "connect", lambda args: LogClient([entry(1, "stdout", "ok")]))
    result = cli("runs", "logs", "run-1", "--level", "error")
    assert result.out == "" and "no log lines at level error" in result.err


def test_follow_prints_new_lines_until_the_run_ends(cli, monkeypatch, lines) -> None:
    client = LogClient(lines, end_after=4)
    monkeypatch.setattr(logs_cmd, "connect", lambda args: client)
    result = cli("runs", "logs", "run-1", "--follow", "--poll", "0.05")
    assert result.code == 0
    shown = result.out.splitlines()
    assert len(shown) == 5 and "line at poll 4" in shown[-1]  # the last, after the end
    assert "run run-1-full ended: COMPLETED" in result.err


def test_follow_of_a_finished_run_prints_and_returns(cli, monkeypatch, lines) -> None:
    client = LogClient(lines)
    monkeypatch.setattr(logs_cmd, "connect", lambda args: client)
    result = cli("runs", "logs", "run-1", "-f", "--level", "warning")
    assert result.code == 0 and len(result.out.splitlines()) == 2


def test_follow_against_the_fake_control_plane(cli, fake_server) -> None:
    """Over real gRPC + TLS: the follow ends when WatchRun delivers the run's final state."""
    fake = fake_server.fake
    address, ca_file = fake_server.address, str(fake_server.ca_file)
    args = ["runs", "logs", "run-x", "--follow", "--poll", "0.05",
            "--control-plane", address, "--ca-file", ca_file]  # fmt: skip
    done: dict[str, object] = {}
    thread = threading.Thread(target=lambda: done.update(result=cli(*args)), daemon=True)
    thread.start()
    poll_until(lambda: bool(fake.watch_calls), message=lambda: "the follow to watch the run")
    with fake.cond:
        # The fake streams from the list position after_event_id (1: the stored run's last
        # event), so the first entry stands for that event.
        fake.events.append(("run-x", control_pb2.RunUpdate(event_id=1, kind="run.created")))
        update = control_pb2.RunUpdate(event_id=2, kind="run.completed", run_state="COMPLETED")
        fake.events.append(("run-x", update))
        fake.cond.notify_all()
    thread.join(DEADLINE_S)
    assert not thread.is_alive(), "--follow did not end with the run"
    result = done["result"]
    assert result.code == 0  # type: ignore[attr-defined]
    assert result.out.count("| hi") == 1  # type: ignore[attr-defined]  # the page repeats
    assert "ended: COMPLETED" in result.err  # type: ignore[attr-defined]


# ---- runs watch ------------------------------------------------------------------------------


class WatchClient(LogClient):
    def __init__(self) -> None:
        super().__init__([])
        self.state = "RUNNING"

    def get_run(self, run_id: str) -> models.RunDetail:
        result = '{"ok": true}' if self.state == "COMPLETED" else ""
        return run_detail(step("a#1"), step("a#2"), state=self.state, result_json=result)

    def watch_run(self, run_id: str, after_event_id: int = 0) -> Iterator[models.RunUpdate]:
        yield models.RunUpdate(1, NOW, "attempt.queued", "a#3")
        outcome = models.StepOutcome("sr", "a#3", "COMPLETED")
        yield models.RunUpdate(2, NOW, "step.completed", "a#3", step_outcome=outcome)
        self.state = "COMPLETED"
        yield models.RunUpdate(3, NOW, "run.completed", run_state="COMPLETED")


def test_runs_watch_shows_progress_then_the_result(cli, monkeypatch) -> None:
    monkeypatch.setattr(runs_cmd, "connect", lambda args: WatchClient())
    result = cli("runs", "watch", "run-1")
    assert result.code == 0
    assert "3/3 steps done" in result.out  # two stored steps + one from the stream
    assert "Run run-1-full: COMPLETED" in result.out and 'Result: {"ok": true}' in result.out


# ---- names, help and completion --------------------------------------------------------------


@pytest.mark.parametrize("name", ["join-tokens", "tokens"])
def test_join_tokens_and_its_old_name_parse_alike(name: str) -> None:
    args = build_parser().parse_args([name, "create", "--environment", "aws", "--data-dir", "d"])
    assert args.environment == "aws" and args.func.__name__ == "cmd_create"


def test_help_says_where_each_command_acts(cli) -> None:
    out = " ".join(cli("--help").out.split())
    assert "join-tokens (tokens) manage agent join (enrollment) tokens [local" in out
    assert "api-tokens" in out and "runs list, show, watch" in out
    assert "[network]" in out and "where commands act:" in out


SHELL_MARKERS = [
    ("bash", "complete "), ("zsh", "#compdef meridian"), ("fish", "complete --command meridian")
]  # fmt: skip


@pytest.mark.parametrize(("shell", "marker"), SHELL_MARKERS)
def test_completion_prints_the_script(cli, shell: str, marker: str) -> None:
    result = cli("completion", shell)
    assert result.code == 0 and marker in result.out and "_ARGCOMPLETE" in result.out


def test_completion_answers_from_the_real_parser(tmp_path: Path) -> None:
    answer = tmp_path / "answer"
    line = "meridian runs logs RUN --le"
    env = {**os.environ, "_ARGCOMPLETE": "1", "COMP_LINE": line, "COMP_POINT": str(len(line)),
           "_ARGCOMPLETE_STDOUT_FILENAME": str(answer)}  # fmt: skip
    code = "from meridian.cli.main import main; main()"
    subprocess.run([sys.executable, "-c", code], env=env, timeout=DEADLINE_S, check=False)
    assert answer.read_text().split() == ["--level"]
    line = "meridian jo"
    env.update(COMP_LINE=line, COMP_POINT=str(len(line)))
    subprocess.run([sys.executable, "-c", code], env=env, timeout=DEADLINE_S, check=False)
    assert answer.read_text().split() == ["join-tokens"]
