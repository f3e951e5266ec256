"""``runs approve|reject``, approvals in ``runs show`` and the hint ``meridian run`` prints when a
run starts waiting: with a fake client and hand-made models."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta

import pytest

from meridian import models
from meridian.cli import approvals as approvals_cmd
from meridian.cli import render
from meridian.cli import run as run_cmd
from meridian.core.errors import ConflictError, PermissionDenied

NOW = datetime(2024, 6, 1, 12, 0, 0, tzinfo=UTC)
RUN = "0f3c5b1e-0000-4000-8000-000000000001"


def approval(state: str = "pending", **kw: object) -> models.ApprovalInfo:
    values: dict = {
        "flow_run_id": RUN,
        "key": "deploy#1",
        "state": state,
        "message": "Deploy build 42 to prod?",
        "requested_at": NOW,
    }
    values.update(kw)
    return models.ApprovalInfo(**values)


class FakeClient:
    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[tuple[str, str, bool, str]] = []
        self.error = error

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def decide_approval(self, run: str, key: str, approve: bool, reason: str = ""):
        self.calls.append((run, key, approve, reason))
        if self.error is not None:
            raise self.error
        state = "approved" if approve else "rejected"
        decided = approval(state, decided_by="token:ab12", reason=reason, decided_at=NOW)
        return models.ApprovalState(decided, "RUNNING")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeClient:
    client = FakeClient()
    monkeypatch.setattr(approvals_cmd, "connect", lambda args: client)
    return client


def test_runs_approve_prints_the_decision(cli, fake) -> None:
    result = cli("runs", "approve", "0f3c", "deploy#1", "--reason", "plan reviewed")
    assert result.code == 0, result.err
    assert fake.calls == [("0f3c", "deploy#1", True, "plan reviewed")]
    assert result.out.strip() == (
        f"Approval deploy#1 of run {RUN}: approved by token:ab12 (plan reviewed); "
        "the run is RUNNING"
    )


def test_runs_reject_needs_a_reason(cli, fake) -> None:
    result = cli("runs", "reject", "0f3c", "deploy#1")
    assert result.code == 2 and "--reason" in result.err
    assert fake.calls == []
    result = cli("runs", "reject", "0f3c", "deploy#1", "--reason", "freeze week")
    assert result.code == 0
    assert fake.calls == [("0f3c", "deploy#1", False, "freeze week")]
    assert "rejected by token:ab12 (freeze week)" in result.out


@pytest.mark.parametrize(
    "error",
    [
        PermissionDenied("this call needs the operator role; the token is viewer"),
        ConflictError("approval deploy#1 of run R is already rejected (by token:x)"),
    ],
)
def test_refusals_are_one_error_line(cli, monkeypatch, error: Exception) -> None:
    monkeypatch.setattr(approvals_cmd, "connect", lambda args: FakeClient(error))
    result = cli("runs", "approve", "0f3c", "deploy#1")
    assert result.code == 1
    assert result.err.strip() == f"error: {error}"


def test_progress_tells_how_to_decide_a_pending_approval() -> None:
    stream = io.StringIO()
    printer = run_cmd.ProgressPrinter(stream)
    pending = approval(deadline=NOW + timedelta(minutes=30))
    printer(
        models.RunUpdate(
            5, NOW, "approval.requested", "deploy#1", message=pending.message, approval=pending
        )
    )
    printer(models.RunUpdate(6, NOW, "run.paused", message="waiting for approval deploy#1"))
    lines = stream.getvalue().splitlines()
    assert "approval.requested" in lines[0] and "Deploy build 42 to prod?" in lines[0]
    assert lines[1] == (
        "  The run waits for approval deploy#1 (it times out at 12:30:00.000 UTC). Decide it with:"
    )
    assert lines[2] == f"    meridian runs approve {RUN} deploy#1 [--reason TEXT]"
    assert lines[3] == f"    meridian runs reject {RUN} deploy#1 --reason TEXT"
    assert "run.paused" in lines[4] and len(lines) == 5


def test_no_hint_for_an_approval_that_was_already_decided() -> None:
    stream = io.StringIO()
    decided = approval("approved", decided_by="token:ab12")
    run_cmd.ProgressPrinter(stream)(
        models.RunUpdate(5, NOW, "approval.requested", "deploy#1", approval=decided)
    )
    assert len(stream.getvalue().splitlines()) == 1


def detail(*approvals: models.ApprovalInfo, state: str = "PAUSED") -> models.RunDetail:
    return models.RunDetail(
        flow_run_id=RUN,
        flow_name="release",
        entrypoint="flows.py:release",
        trigger="manual",
        parameters_json="{}",
        bundle_sha256="a" * 64,
        state=state,
        created_at=NOW,
        approvals=approvals,
    )


def test_runs_show_lists_approvals_and_how_to_decide_pending_ones() -> None:
    decided = approval(
        "approved",
        key="plan#1",
        decided_at=NOW + timedelta(seconds=90),
        decided_by="token:ab12",
        reason="plan reviewed",
    )
    pending = approval(deadline=NOW + timedelta(hours=1))
    text = render.render_run(detail(decided, pending))
    section = text.split("\nApprovals\n", 1)[1].splitlines()
    assert section[0].split() == ["APPROVAL", "STATE", "REQUESTED", "DECIDED", "BY", "REASON", "/",
                                  "MESSAGE"]  # fmt: skip
    assert section[1].startswith("plan#1") and "token:ab12" in section[1]
    assert "2024-06-01 12:01:30 UTC" in section[1] and section[1].endswith("plan reviewed")
    assert "(times out 2024-06-01 13:00:00 UTC)" in section[2]
    assert section[2].endswith("Deploy build 42 to prod?")
    assert f"meridian runs approve {RUN} KEY" in section[3]
    assert "Approvals" not in render.render_run(detail(state="RUNNING"))


def test_runs_show_json_has_the_approvals() -> None:
    rejected = approval("rejected", decided_at=NOW, decided_by="token:ab12", reason="no")
    document = json.loads(render.to_json(render.run_to_dict(detail(rejected))))
    assert document["approvals"] == [
        {
            "key": "deploy#1",
            "state": "rejected",
            "message": "Deploy build 42 to prod?",
            "requested_at": "2024-06-01T12:00:00.000Z",
            "deadline": None,
            "decided_at": "2024-06-01T12:00:00.000Z",
            "decided_by": "token:ab12",
            "reason": "no",
        }
    ]
