"""``approve()`` in real flow bodies run by ``run_flow`` against an in-process control plane
(gRPC over TLS); the flows have no steps, so no agent is needed. An operator decides from
the test thread while the body waits in another."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from control_plane import ServerConfig, create_api_token
from meridian import models
from meridian.client import ControlClient
from meridian.core.errors import ApprovalRejected, StepCancelled, ValidationError
from meridian.sdk import approve
from meridian.sdk._approvals import ApprovalWaits
from meridian.sdk.runner import RunOutcome, run_flow
from tests.support.deadlines import DEADLINE_S
from tests.support.plane import ThreadedControlPlane
from tests.support.polling import poll_until

FLOWS = """
from meridian import ApprovalRejected, approve, flow


@flow
def twice(timeout: float = 0.0) -> dict:
    first = approve("deploy", message="ship build 42?", timeout=timeout or None)
    second = approve("deploy", key="announce")
    return {"key": first.key, "by": first.approved_by, "reason": first.reason,
            "second": second.key}


@flow
def with_fallback() -> str:
    try:
        approve("deploy")
    except ApprovalRejected as exc:
        return f"{exc.key} rejected by {exc.decided_by}: {exc.reason}"
    return "approved"
"""


@dataclass
class Plane:
    address: str
    ca_file: Path
    data_dir: Path
    flows: Path

    def client(self, role: str) -> ControlClient:
        token = create_api_token(self.data_dir, role)
        return ControlClient(self.address, self.ca_file, token=token)


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    data_dir = tmp_path_factory.mktemp("plane")
    flows = tmp_path_factory.mktemp("project") / "approval_flows.py"
    flows.write_text(FLOWS)
    config = ServerConfig(data_dir=data_dir, listen="127.0.0.1:0", agent_listen="127.0.0.1:0")
    server = ThreadedControlPlane(config)
    started = server.start()
    try:
        yield Plane(started.address, started.ca_file, data_dir, flows)
    finally:
        server.stop()


class Runner:
    """``run_flow`` on a thread: the body blocks in approve() while the test decides."""

    def __init__(self, plane: Plane, flow: str, **params: str) -> None:
        self.client = plane.client("operator")
        self.outcome: RunOutcome | None = None
        self.error: BaseException | None = None
        target = f"{plane.flows}:{flow}"
        self._thread = threading.Thread(target=self._run, args=(target, params), daemon=True)
        self._thread.start()

    def _run(self, target: str, params: dict[str, str]) -> None:
        try:
            self.outcome = run_flow(self.client, target, params)
        except BaseException as exc:
            self.error = exc

    def run_id(self) -> str:
        wait_for(lambda: self.client.runner_tokens, "the run to be created")
        return next(iter(self.client.runner_tokens))

    def wait_pending(self, key: str) -> str:
        run_id = self.run_id()

        def pending() -> bool:
            detail = self.client.get_run(run_id)
            return detail.state == "PAUSED" and any(
                a.key == key and a.state == "pending" for a in detail.approvals
            )

        wait_for(pending, f"{key} to be pending")
        return run_id

    def result(self) -> RunOutcome:
        self._thread.join(DEADLINE_S)
        assert not self._thread.is_alive(), "the flow body never finished"
        if self.error is not None:
            raise self.error
        assert self.outcome is not None
        return self.outcome


def wait_for(check: Callable[[], Any], what: str) -> None:
    poll_until(check, message=what)


def test_approvals_unblock_the_body_and_say_who_approved(plane: Plane) -> None:
    runner = Runner(plane, "twice")
    run_id = runner.wait_pending("deploy#1")
    operator = plane.client("operator")
    operator.decide_approval(run_id, "deploy#1", True, "plan reviewed")
    runner.wait_pending("announce")
    operator.decide_approval(run_id, "announce", True)
    outcome = runner.result()
    assert outcome.state == "COMPLETED", outcome.error
    assert outcome.result["key"] == "deploy#1" and outcome.result["second"] == "announce"
    assert outcome.result["reason"] == "plan reviewed"
    assert outcome.result["by"].startswith("token:")


def test_a_rejection_raises_in_the_body_which_may_catch_it(plane: Plane) -> None:
    runner = Runner(plane, "with_fallback")
    run_id = runner.wait_pending("deploy#1")
    plane.client("operator").decide_approval(run_id, "deploy", False, "freeze week")
    outcome = runner.result()
    assert outcome.state == "COMPLETED"
    assert outcome.result.startswith("deploy#1 rejected by token:")
    assert outcome.result.endswith(": freeze week")


def test_an_uncaught_rejection_fails_the_run(plane: Plane) -> None:
    runner = Runner(plane, "twice")
    run_id = runner.wait_pending("deploy#1")
    plane.client("operator").decide_approval(run_id, "deploy#1", False, "wrong build")
    outcome = runner.result()
    assert outcome.state == "FAILED" and outcome.error is not None
    assert outcome.error.type == "meridian.core.errors.ApprovalRejected"
    assert "wrong build" in outcome.error.message


def test_nobody_deciding_in_time_raises_approval_timed_out(plane: Plane) -> None:
    outcome = Runner(plane, "twice", timeout="1").result()
    assert outcome.state == "FAILED" and outcome.error is not None
    assert outcome.error.type == "meridian.core.errors.ApprovalTimedOut"
    assert "no decision within 1s" in outcome.error.message


def test_cancelling_a_waiting_run_raises_the_cancellation_in_the_body(plane: Plane) -> None:
    runner = Runner(plane, "twice")
    run_id = runner.wait_pending("deploy#1")
    plane.client("operator").cancel_run(run_id, "changed plans")
    outcome = runner.result()
    assert outcome.state == "CANCELLED"
    assert outcome.error is not None and outcome.error.type == "meridian.core.errors.StepCancelled"
    assert "while waiting for deploy#1" in outcome.error.message


def test_approve_outside_a_flow_or_with_bad_arguments_is_a_validation_error() -> None:
    with pytest.raises(ValidationError, match="outside a running flow"):
        approve("deploy")
    for kwargs, problem in (
        ({"name": ""}, "non-empty string"),
        ({"name": "a#b"}, "without '#'"),
        ({"name": "x", "key": "k#1"}, "must not contain '#'"),
        ({"name": "x", "message": "m" * 4097}, "at most 4 KiB"),
        ({"name": "x", "timeout": 0.5}, "between 1 and 2592000"),
        ({"name": "x", "timeout": float("inf")}, "between 1 and 2592000"),
    ):
        with pytest.raises(ValidationError, match=problem):
            approve(**kwargs)


def _info(key: str, state: str) -> models.ApprovalInfo:
    return models.ApprovalInfo("run", key, state, decided_at=datetime.now(UTC))


def test_waits_keep_decisions_seen_early_and_fail_everything_once_closed() -> None:
    waits = ApprovalWaits()
    waits.offer(_info("a#1", "pending"))  # not a decision: ignored
    waits.offer(_info("b#1", "approved"))
    assert waits.expect("b#1").wait().state == "approved"
    waiter = waits.expect("a#1")
    waits.close(lambda key: StepCancelled(key, "cancelled", "", "run cancelled"))
    with pytest.raises(StepCancelled):
        waiter.wait()
    with pytest.raises(StepCancelled):
        waits.expect("c#1").wait()
    waits.offer(_info("a#1", "rejected"))  # too late: the first answer wins
    with pytest.raises(StepCancelled):
        waiter.wait()


def test_rejected_errors_carry_who_and_why() -> None:
    error = ApprovalRejected("deploy#1", "token:ab", "not today")
    assert str(error) == "approval deploy#1 was rejected by token:ab: not today"
    assert (error.key, error.decided_by, error.reason) == ("deploy#1", "token:ab", "not today")
