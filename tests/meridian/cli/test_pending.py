"""What a run waits for, in runs show / runs cancel, and the lines after an interrupt."""

from __future__ import annotations

from datetime import UTC, datetime

from meridian import models
from meridian.cli.pending import pending_lines, pending_to_dict, unconfirmed, unconfirmed_lines
from meridian.cli.run import format_update, interrupted_lines

T0 = datetime(2024, 6, 1, 12, 0, 0, tzinfo=UTC)


def detail(state: str, *attempts: tuple[str, str, str], events: tuple[models.RunEvent, ...] = ()):
    steps = tuple(
        models.StepRunDetail(
            step_run_id=f"s{i}",
            key=key,
            name=key.split("#")[0],
            state="RUNNING",
            attempts=(
                models.AttemptDetail(attempt_id=f"a{i}", number=1, state=a_state, agent_name=agent),
            ),
        )
        for i, (key, a_state, agent) in enumerate(attempts)
    )
    return models.RunDetail("run-1", "etl", "f.py:etl", "manual", "{}", "", state, steps=steps,
                            events=events)  # fmt: skip


def waiting_event(attempt_id: str, message: str, event_id: int) -> models.RunEvent:
    return models.RunEvent(event_id, T0, "attempt.waiting", "x#1", attempt_id, message=message)


def test_queued_attempts_show_their_latest_reason() -> None:
    events = (waiting_event("a0", "first reason", 1), waiting_event("a0", "no agent: typo", 2))
    run = detail("RUNNING", ("extract#1", "QUEUED", ""), ("load#1", "QUEUED", ""), events=events)
    lines = pending_lines(run)
    assert "Waiting to start:" in lines
    assert "  extract#1 attempt 1: no agent: typo" in lines
    assert "  load#1 attempt 1: queued (no reason yet)" in lines
    assert pending_to_dict(run)["waiting"][0] == {
        "step_key": "extract#1", "attempt": 1, "reason": "no agent: typo"
    }  # fmt: skip


def test_a_cancelling_run_names_the_agents_that_must_confirm() -> None:
    run = detail("CANCELLING", ("extract#1", "RUNNING", "aws-1"), ("load#1", "CANCELLED", "gcp"))
    held = unconfirmed(run)
    assert [(u.step_key, u.agent) for u in held] == [("extract#1", "aws-1")]
    assert "waits for agent aws-1 to confirm" in "\n".join(pending_lines(run))
    assert unconfirmed_lines(held, {"aws-1": "stale"}) == [
        "  extract#1 attempt 1 (RUNNING): waits for agent aws-1 to confirm, agent is stale"
    ]
    assert pending_to_dict(run)["awaiting_confirmation"][0]["agent"] == "aws-1"
    assert pending_lines(detail("COMPLETED", ("x#1", "SUCCEEDED", "a"))) == []


def test_the_lists_are_bounded() -> None:
    many = [(f"s#{i}", "RUNNING", "a") for i in range(100)]
    assert len(unconfirmed_lines(unconfirmed(detail("CANCELLING", *many)))) == 21


def test_interrupt_lines_always_say_how_to_resume() -> None:
    for state, abandoned in (("CANCELLED", False), ("CANCELLING", False), ("", True)):
        text = "\n".join(interrupted_lines("run-1", state, abandoned=abandoned))
        assert "meridian runs resume run-1" in text
    cancelling = interrupted_lines("r", "CANCELLING", abandoned=False)
    assert "not every agent has confirmed" in "\n".join(cancelling)


def test_a_waiting_progress_line_keeps_most_of_its_reason() -> None:
    reason = "no connected agent matches " + "x" * 200
    update = models.RunUpdate(1, T0, "attempt.waiting", "extract#1", message=reason)
    assert reason in format_update(update)
