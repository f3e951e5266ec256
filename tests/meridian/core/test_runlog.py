"""meridian.get_logger(): marker lines inside a step, ordinary logging outside one."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

import meridian
from meridian.core import runcontext, runlog
from meridian.core.runcontext import RunContext
from meridian.core.runlog import LOG_MARKER, MAX_RECORD_LINE_BYTES, decode_record, encode_record

STEP = RunContext(run_id="run-1", step_key="load#1", attempt_number=1)


class Stderr:
    """What the step wrote to stderr (pytest's capture stands in for the step's log file)."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self._capsys = capsys

    def getvalue(self) -> str:
        return self._capsys.readouterr().err


@pytest.fixture
def stderr(capsys: pytest.CaptureFixture[str]) -> Iterator[Stderr]:
    yield Stderr(capsys)
    runlog.reset()


def records(text: str) -> list[dict[str, str]]:
    lines = text.splitlines()
    assert all(line.startswith(LOG_MARKER) for line in lines), lines
    return [json.loads(line[len(LOG_MARKER) :]) for line in lines]


def test_in_a_step_every_level_is_one_marker_line_on_stderr(stderr: Stderr) -> None:
    log = meridian.get_logger("etl")
    with runcontext.step_scope(STEP):
        log.debug("d %s", 1)
        log.info("i")
        log.warning("w")
        log.error("e")
        log.log(25, "custom level between info and warning")
        meridian.get_logger().critical("c")
    got = [(r["level"], r["logger"], r["message"]) for r in records(stderr.getvalue())]
    assert got == [
        ("debug", "meridian.run.etl", "d 1"),
        ("info", "meridian.run.etl", "i"),
        ("warning", "meridian.run.etl", "w"),
        ("error", "meridian.run.etl", "e"),
        ("warning", "meridian.run.etl", "custom level between info and warning"),
        ("critical", "meridian.run", "c"),
    ]


def test_a_logged_exception_carries_its_traceback(stderr: Stderr) -> None:
    with runcontext.step_scope(STEP):
        try:
            raise KeyError("missing")
        except KeyError:
            meridian.get_logger().exception("lookup failed")
    written = stderr.getvalue()
    (record,) = records(written)
    assert record["level"] == "error" and "KeyError: 'missing'" in record["exc"]
    level, lines = decode_record(written.rstrip("\n")) or ("", [])
    assert level == "error" and lines[0] == "lookup failed"
    assert lines[-1] == "KeyError: 'missing'"


def test_outside_a_step_records_go_to_the_process_handlers_unmarked(
    stderr: Stderr, caplog: pytest.LogCaptureFixture
) -> None:
    log = meridian.get_logger("flowbody")
    with caplog.at_level(logging.INFO):
        log.info("hello from the flow body")
        log.debug("below the root level: dropped")
    assert [r.getMessage() for r in caplog.records if r.name.startswith("meridian.run")] == [
        "hello from the flow body"
    ]
    assert LOG_MARKER not in stderr.getvalue()


def test_in_a_step_nothing_reaches_the_process_handlers(
    stderr: Stderr, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG), runcontext.step_scope(STEP):
        meridian.get_logger("x").warning("only once")
    assert not [r for r in caplog.records if r.name.startswith("meridian.run")]
    assert len(records(stderr.getvalue())) == 1


def test_reset_undoes_what_a_step_changed(stderr: Stderr) -> None:
    root = meridian.get_logger()
    root.setLevel(logging.CRITICAL)
    root.addHandler(logging.NullHandler())
    root.propagate = False
    runlog.reset()
    assert root.level == logging.NOTSET and len(root.handlers) == 1 and root.propagate
    with runcontext.step_scope(STEP):
        assert root.level == logging.DEBUG and not root.propagate
        assert meridian.get_logger("child").isEnabledFor(logging.DEBUG)
    assert not meridian.get_logger("child").isEnabledFor(logging.DEBUG)  # root is at WARNING


@pytest.mark.parametrize("name", ["", "x" * (runlog.MAX_LOGGER_CHARS + 1)])
def test_bad_logger_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        meridian.get_logger(name)


@pytest.mark.parametrize(
    ("message", "exc"),
    [
        ("m" * 100_000, ""),
        ("é" * 40_000, "t" * 50_000),
        ('"\n\\' * 20_000, "\x00" * 20_000),  # JSON escapes make these up to 6x longer
        ("short", "tb line\n" * 10_000),
    ],
)
def test_a_record_line_is_bounded_and_still_decodes(message: str, exc: str) -> None:
    line = encode_record("warning", "meridian.run.big", message, exc)
    assert len(line.encode("utf-8")) <= MAX_RECORD_LINE_BYTES
    decoded = decode_record(line)
    assert decoded is not None and decoded[0] == "warning"
    assert decoded[1][0].startswith("big: ")
    if exc.startswith("tb line"):
        assert decoded[1][-1] == "tb line"  # a traceback keeps its end


@pytest.mark.parametrize(
    "text",
    [
        "plain output",
        LOG_MARKER + "not json",
        LOG_MARKER + "[1, 2]",
        LOG_MARKER + json.dumps({"level": "loud", "message": "x"}),
        LOG_MARKER + json.dumps({"level": "info", "message": 5}),
        LOG_MARKER + json.dumps({"level": "info", "message": "x", "exc": 1}),
    ],
)
def test_anything_but_a_well_formed_record_is_not_decoded(text: str) -> None:
    assert decode_record(text) is None


def test_level_names_round_custom_levels_up() -> None:
    assert [runlog.level_name(n) for n in (1, 10, 11, 20, 30, 31, 40, 50, 60)] == [
        "debug", "debug", "info", "info", "warning", "error", "error", "critical", "critical",
    ]  # fmt: skip
