"""Redaction of resolved secret values (the pure ``agent.secrets.redact`` module and where it is
applied to log lines), and references reaching the agent through its protocol edge."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from urllib.parse import quote

from agent import convert
from agent.actions import AssignAction
from agent.logbatch import MAX_LINE_CHARS, pump_logs
from agent.reports import AttemptFinished, HandleRecorded, LogChunk, LogLine, ProposeRunning
from agent.secrets import Redactor, redact_report
from agent.secrets.redact import MASK, MIN_REDACT_CHARS, encodings
from protos.meridian.v1 import agent_pb2, common_pb2
from providers.base import ErrorInfo, LogRecord

SECRET = 'p@ss/w"rd+1 é'


def test_value_and_its_common_encodings_are_masked() -> None:
    r = Redactor.for_values([SECRET])
    raw = SECRET.encode()
    for form in (
        SECRET,
        json.dumps(SECRET)[1:-1],
        json.dumps(SECRET, ensure_ascii=False)[1:-1],
        quote(SECRET, safe=""),
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
    ):
        assert r.scrub(f"before {form} after") == f"before {MASK} after", form


def test_every_occurrence_and_every_value() -> None:
    r = Redactor.for_values(["alpha-secret", "beta-secret"])
    assert r.scrub("alpha-secret,beta-secret;alpha-secret") == "***,***;***"


def test_longer_value_wins_over_a_value_it_contains() -> None:
    r = Redactor.for_values(["token", "token-with-suffix"])
    assert r.scrub("x token-with-suffix y token") == "x *** y ***"


def test_multiline_value_is_masked_line_by_line() -> None:
    pem = "-----BEGIN KEY-----\nMIIEabcdefgh\n-----END KEY-----"
    r = Redactor.for_values([pem])
    assert r.scrub("MIIEabcdefgh") == MASK
    assert r.scrub("-----END KEY-----") == MASK


def test_short_values_are_not_redacted_on_purpose() -> None:
    assert MIN_REDACT_CHARS == 4
    r = Redactor.for_values(["abc", ""])
    assert not r.active
    assert r.scrub("abc is fine") == "abc is fine"
    assert all(len(form) >= MIN_REDACT_CHARS for form in encodings("abcd"))


def test_regex_metacharacters_are_literal() -> None:
    r = Redactor.for_values(["a.b*c(d)"])
    assert r.scrub("a.b*c(d) axbbbc(d)") == "*** axbbbc(d)"


def test_empty_redactor_changes_nothing() -> None:
    body = LogChunk((LogLine(1, "stdout", "hello"),))
    assert redact_report(body, Redactor()) is body
    assert Redactor().scrub("hello") == "hello"


def test_reports_are_scrubbed_in_every_text_field() -> None:
    r = Redactor.for_values(["hunter22"])
    chunk = redact_report(LogChunk((LogLine(1, "stderr", "pw=hunter22"),)), r)
    assert chunk == LogChunk((LogLine(1, "stderr", "pw=***"),))
    finished = AttemptFinished(
        outcome="failed",
        result_json='{"x": 1}',
        error=ErrorInfo("transient", "builtins.ValueError", "bad hunter22", "tb hunter22"),
        exit_code=1,
    )
    scrubbed = redact_report(finished, r)
    assert isinstance(scrubbed, AttemptFinished) and scrubbed.error is not None
    assert (scrubbed.error.message, scrubbed.error.traceback) == ("bad ***", "tb ***")
    assert (scrubbed.outcome, scrubbed.result_json, scrubbed.exit_code) == ("failed", '{"x": 1}', 1)
    handle = redact_report(HandleRecorded('{"env": "hunter22"}', "res-hunter22"), r)
    assert handle == HandleRecorded('{"env": "***"}', "res-***")
    assert redact_report(ProposeRunning(), r) == ProposeRunning()


def test_log_lines_are_scrubbed_before_they_are_cut() -> None:
    secret = "straddling-secret-value"
    # The secret starts just before the cut: cut first, and its prefix would ship unmasked.
    text = "x" * (MAX_LINE_CHARS - 5) + secret

    async def records() -> AsyncIterator[LogRecord]:
        yield LogRecord("stdout", text, 1)

    chunks: list[LogChunk] = []
    scrub = Redactor.for_values([secret]).scrub
    asyncio.run(pump_logs(records(), chunks.append, scrub=scrub))
    shipped = chunks[0].lines[0].text
    assert shipped == "x" * (MAX_LINE_CHARS - 5) + MASK
    assert "strad" not in shipped


def test_assignments_carry_references_only() -> None:
    spec = common_pb2.StepSpec(name="s", module="m", function="f", provider="process")
    spec.secrets["DB_PASSWORD"] = "aws-sm:prod/db#password"
    frame = agent_pb2.ControlFrame(
        assign=agent_pb2.AssignBatch(assignments=[agent_pb2.Assign(attempt_id="a", spec=spec)])
    )
    action = convert.action_from_proto(frame)
    assert isinstance(action, AssignAction)
    assert action.assignments[0].spec.secret_map == {"DB_PASSWORD": "aws-sm:prod/db#password"}
