"""The audit view, built from hand-made models."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from meridian import models
from meridian.cli import render
from meridian.core import sealing
from meridian.core.sealing import KeyRing

T0 = datetime(2024, 6, 1, 12, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


RESET = models.ErrorInfo(
    error_class="transient",
    type="builtins.ConnectionResetError",
    message="warehouse connection reset by peer",
    traceback="Traceback (most recent call last):\n  File x\nConnectionResetError: reset\n",
)


def attempt(number: int, state: str, env: str, start: float, end: float, error=None):
    return models.AttemptDetail(
        attempt_id=f"att-{env}-{number}",
        number=number,
        state=state,
        environment=env,
        agent_id=f"agent-{env}",
        agent_name=f"{env}-agent",
        provider="process",
        resource_id=f"pid:{1000 + number}",
        started_at=at(start),
        ended_at=at(end),
        error=error,
        recovered=state == "FAILED" and error is not None,
    )


def step(key: str, state: str, *attempts, error=None, ended: float = 0.0):
    return models.StepRunDetail(
        step_run_id=f"sr-{key}",
        key=key,
        name=key.split("#")[0],
        state=state,
        target="cloud=aws",
        provider="process",
        inputs_digest="sha256:abc",
        result_json='{"ok": true}' if state == "COMPLETED" else "",
        error=error,
        created_at=at(0),
        ended_at=at(ended) if ended else (attempts[-1].ended_at if attempts else None),
        attempts=tuple(attempts),
    )


def completed_run() -> models.RunDetail:
    return models.RunDetail(
        flow_run_id="run-123",
        flow_name="cross_cloud_etl",
        entrypoint="examples/cross_cloud_etl.py:cross_cloud_etl",
        trigger="manual",
        parameters_json='{"day": "2024-06-01"}',
        bundle_sha256="f" * 64,
        state="COMPLETED",
        created_at=at(0),
        started_at=at(0.1),
        ended_at=at(3.5),
        result_json='{"revenue_eur": 1234.5}',
        steps=(
            step("extract#1", "COMPLETED", attempt(1, "SUCCEEDED", "aws-demo", 0.2, 0.8)),
            step("transform#1", "COMPLETED", attempt(1, "SUCCEEDED", "gcp-demo", 0.9, 1.2)),
            step("transform#2", "COMPLETED", attempt(1, "SUCCEEDED", "gcp-demo", 0.9, 1.3)),
            step(
                "load#1",
                "COMPLETED",
                attempt(1, "FAILED", "onprem-demo", 1.4, 1.6, RESET),
                attempt(2, "SUCCEEDED", "onprem-demo", 1.9, 2.4),
            ),
            step("report#1", "CACHED"),
        ),
    )


def failed_run() -> models.RunDetail:
    final = replace(RESET, error_class="permanent", type="builtins.ValueError", message="bad row")
    load = step(
        "load#1",
        "FAILED",
        attempt(1, "FAILED", "onprem-demo", 1.4, 1.6, RESET),
        attempt(2, "FAILED", "onprem-demo", 1.9, 2.4, final),
        error=final,
    )
    later = step("audit#1", "FAILED", attempt(1, "FAILED", "aws-demo", 2.0, 3.0, RESET))
    return replace(
        completed_run(),
        state="FAILED",
        steps=(*completed_run().steps[:3], later, load),
        error=models.ErrorInfo(
            "permanent", "meridian.core.errors.StepFailed", "step load#1 failed"
        ),
    )


def test_summary_separates_recovered_from_final() -> None:
    summary = render.summarize(completed_run())
    assert summary.step_counts == {"COMPLETED": 4, "CACHED": 1}
    assert [(f.step_key, f.attempt) for f in summary.recovered] == [("load#1", 1)]
    assert summary.recovered[0].error_type == "builtins.ConnectionResetError"
    assert summary.final_failure is None
    assert summary.other == ()


def test_final_failure_is_the_first_step_to_fail_for_good() -> None:
    summary = render.summarize(failed_run())
    assert summary.final_failure is not None
    assert summary.final_failure.step_key == "load#1"
    assert summary.final_failure.attempt == 2
    assert summary.final_failure.message == "bad row"
    assert [f.step_key for f in summary.other] == ["audit#1"]
    assert summary.recovered == ()  # load#1 never completed, so nothing was recovered


def test_flow_body_failure_without_failed_steps() -> None:
    run = replace(completed_run(), state="FAILED", error=RESET)
    final = render.summarize(run).final_failure
    assert final is not None and final.step_key == "(flow body)"


def test_caught_step_failure_in_a_completed_run_is_not_final() -> None:
    run = completed_run()
    caught = step("probe#1", "FAILED", attempt(1, "FAILED", "aws-demo", 1, 2, RESET))
    summary = render.summarize(replace(run, steps=(*run.steps, caught)))
    assert summary.final_failure is None
    assert [f.step_key for f in summary.other] == ["probe#1"]


def test_render_run_text() -> None:
    text = render.render_run(completed_run())
    for expected in (
        "cross_cloud_etl",
        "examples/cross_cloud_etl.py:cross_cloud_etl",
        "manual",
        '{"day": "2024-06-01"}',
        "sha256:" + "f" * 64,
        "2024-06-01 12:00:00 UTC",
        "took 3.4s",
        "onprem-demo-agent",
        "pid:1001",
        "12:00:01.400",
        "transient: ConnectionResetError: warehouse connection reset by peer",
        "Steps: 4 COMPLETED, 1 CACHED",
        "load#1 attempt 1: [transient] builtins.ConnectionResetError",
    ):
        assert expected in text, expected
    recovered, _, final = text.partition("Failure that ended the run:")
    assert "load#1 attempt 1" in recovered
    assert final.strip() == "none"


def test_render_failed_run_shows_traceback_head() -> None:
    text = render.render_run(failed_run())
    final = text.split("Failure that ended the run:")[1]
    assert "load#1 attempt 2: [permanent] builtins.ValueError: bad row" in final
    assert "Traceback (most recent call last):" in final
    assert "Other failed steps:" in final


def test_timeline_has_a_row_per_attempt_and_step_without_attempts() -> None:
    text = render.render_run(completed_run())
    timeline = text.split("Timeline (times UTC)")[1].split("Steps:")[0]
    rows = [line for line in timeline.strip().splitlines()[1:] if line.strip()]
    assert len(rows) == 6  # 5 steps, load#1 twice
    (report,) = [row for row in rows if row.startswith("report#1")]
    assert "CACHED" in report  # a step without attempts still has its row


def test_long_errors_are_truncated() -> None:
    long = replace(RESET, message="x" * 500)
    run = completed_run()
    load = replace(run.steps[3], attempts=(replace(run.steps[3].attempts[0], error=long),))
    text = render.render_run(replace(run, steps=(*run.steps[:3], load)))
    row = next(line for line in text.splitlines() if line.startswith("load#1"))
    assert "…" in row and len(row) < 300


def test_json_document() -> None:
    document = render.run_to_dict(completed_run())
    assert json.loads(render.to_json(document)) == document
    assert document["parameters"] == {"day": "2024-06-01"}
    assert document["result"] == {"revenue_eur": 1234.5}
    assert document["created_at"] == "2024-06-01T12:00:00.000Z"
    (load,) = [step for step in document["steps"] if step["key"] == "load#1"]
    assert [a["state"] for a in load["attempts"]] == ["FAILED", "SUCCEEDED"]
    assert load["attempts"][0]["error"]["error_class"] == "transient"
    assert load["attempts"][0]["duration_s"] == 0.2
    assert document["summary"]["recovered_failures"][0]["step_key"] == "load#1"
    assert document["summary"]["final_failure"] is None
    assert set(document) >= {"flow_run_id", "trigger", "bundle_sha256", "state", "ended_at"}


def test_json_final_failure() -> None:
    document = render.run_to_dict(failed_run())
    assert document["summary"]["final_failure"]["error_type"] == "builtins.ValueError"


def test_formatting_primitives() -> None:
    assert render.format_seconds(None) == "-"
    assert render.format_seconds(0.25) == "250ms"
    assert render.format_seconds(4.21) == "4.2s"
    assert render.format_seconds(184) == "3m04s"
    assert render.format_seconds(7500) == "2h05m"
    assert render.iso(None) is None
    assert render.truncate("a\nb  c", 10) == "a b c"
    assert render.truncate("abcdef", 4) == "abc…"
    assert render.parse_json_text("not json") == "not json"
    assert render.table(("A", "B"), [["x", "y"]]) == "A  B\nx  y"


def test_attempts_are_marked_recovered_final_or_lost_agent() -> None:
    lost = models.ErrorInfo("lost_agent", "meridian.AgentLost", "agent went silent")
    run = failed_run()
    relocated = step(
        "extract#1",
        "COMPLETED",
        attempt(1, "LOST", "aws-demo", 0.2, 0.5, lost),
        attempt(2, "SUCCEEDED", "aws-demo", 0.6, 0.8),
    )
    run = replace(run, steps=(relocated, *run.steps[1:]))
    marks = render.attempt_marks(run)
    assert marks["att-aws-demo-1"] == ("lost-agent", "recovered")
    assert marks["att-onprem-demo-2"] == ("final",)
    assert "att-onprem-demo-1" not in marks  # retried, but the retry failed too
    text = render.render_run(run)
    assert "[lost-agent, recovered]" in text and "[final]" in text
    assert "first moment of true failure" in text
    document = render.run_to_dict(run)
    extract = next(s for s in document["steps"] if s["key"] == "extract#1")
    assert extract["attempts"][0]["marks"] == ["lost-agent", "recovered"]
    assert document["summary"]["final_failure"]["at"] is not None


def sealed_run() -> models.RunDetail:
    """A run whose result, one step result and one step error are sealed (eu-sites)."""
    keys = KeyRing({"eu-sites": bytes(64)})
    result = sealing.seal_text(keys, "eu-sites", '{"iban": "DE89"}', sealing.RESULT, "r", "")
    step_result = sealing.seal_text(keys, "eu-sites", '"DE89"', sealing.RESULT, "r", "load#1")
    message, traceback = sealing.seal_error_texts(
        keys, "eu-sites", "bad iban DE89", "Traceback: DE89", "r", "load#1"
    )
    sealed_error = replace(RESET, message=message, traceback=traceback)
    load = step(
        "load#1",
        "COMPLETED",
        attempt(1, "FAILED", "onprem-demo", 1.4, 1.6, sealed_error),
        attempt(2, "SUCCEEDED", "onprem-demo", 1.9, 2.4),
    )
    return replace(
        completed_run(),
        result_json=result,
        steps=(*completed_run().steps[:3], replace(load, result_json=step_result)),
    )


def test_sealed_values_show_key_group_and_digest_never_ciphertext() -> None:
    detail = sealed_run()
    text = render.render_run(detail)
    document = render.run_to_dict(detail)
    dumped = render.to_json(document)
    for shown in (text, dumped):
        assert "DE89" not in shown and '"$sealed"' not in shown and "ct" not in shown.split()
    assert "[sealed: eu-sites]" in text
    assert "Sealed results (readable only where the key group's key is held):" in text
    assert "  eu-sites: load#1, (flow result)" in text
    load = next(s for s in document["steps"] if s["key"] == "load#1")
    assert load["result"]["sealed"]["key_group"] == "eu-sites"
    assert (
        load["result"]["sealed"]["sha256"]
        == hashlib.sha256(detail.steps[-1].result_json.encode()).hexdigest()
    )
    assert document["result"]["sealed"]["key_group"] == "eu-sites"
    assert load["attempts"][0]["error"]["message"] == "[sealed: eu-sites]"
    assert document["summary"]["recovered_failures"][0]["message"] == "[sealed: eu-sites]"
    # Plain values render as before.
    assert render.run_to_dict(completed_run())["result"] == {"revenue_eur": 1234.5}


def test_a_reused_step_names_the_run_it_was_reused_from() -> None:
    reused = replace(
        step("report#1", "CACHED", ended=3.0),
        reused_from_run_id="run-042",
        reused_from_step_key="report#1",
    )
    detail = replace(completed_run(), steps=(reused,))
    row = next(line for line in render.render_run(detail).splitlines() if "report#1" in line)
    assert "CACHED" in row and "reused from run run-042 (report#1)" in row
    (document,) = render.run_to_dict(detail)["steps"]
    assert document["reused_from"] == {"flow_run_id": "run-042", "step_key": "report#1"}
    plain = render.run_to_dict(completed_run())["steps"][0]
    assert plain["reused_from"] is None
