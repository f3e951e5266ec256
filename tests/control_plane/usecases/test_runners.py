"""Hosted flow runners in the store (decision 0018): assignment to runner slots, epoch
fencing, and what a lapsed runner lease does to a hosted run."""

from __future__ import annotations

import datetime as dt

import pytest

from control_plane.orchestration.runner_plan import RunnerHost
from control_plane.orchestration.values import AssignRunnerOut
from control_plane.store.db import Store
from control_plane.store.models import EventRow, FlowRunRow
from control_plane.usecases.runners import (
    RunnerEndpoint,
    assign_runners,
    check_runner_epoch,
    create_hosted_run,
)
from control_plane.usecases.runs import crash_runs_with_lapsed_leases, finish_run
from meridian.core.errors import ConflictError
from tests.control_plane.usecases.helpers import T0, run_at

ENDPOINT = RunnerEndpoint(":7000", b"ca")


def hosts(slots: int = 1) -> list[RunnerHost]:
    return [
        RunnerHost("a1", "a1", "aws-demo", {"cloud": "aws"}, slots, 0),
        RunnerHost("a2", "a2", "gcp-demo", {"cloud": "gcp"}, slots, 0),
    ]


def hosted_run(store: Store, target: str = "", at: dt.datetime = T0) -> str:
    run, _ = run_at(
        store,
        at,
        create_hosted_run,
        flow_name="etl",
        entrypoint="flows.py:etl",
        parameters_json="{}",
        bundle_sha256="b" * 64,
        runner_target=target,
    )
    return run.id


def row(store: Store, run_id: str) -> FlowRunRow:
    return store.run_sync(lambda s: s.get(FlowRunRow, run_id))


def test_assignment_never_over_fills_runner_slots(store: Store) -> None:
    runs = [hosted_run(store, at=T0 + dt.timedelta(seconds=i)) for i in range(3)]
    _, effects = run_at(store, T0 + dt.timedelta(seconds=5), assign_runners, hosts(), ENDPOINT)
    assert sorted(f.agent_id for f in effects.runner_frames) == ["a1", "a2"]
    assert {f.flow_run_id for f in effects.runner_frames} == set(runs[:2])  # oldest first
    assert all(isinstance(f, AssignRunnerOut) and f.runner_token for f in effects.runner_frames)
    assert all(f.runner_epoch == 1 for f in effects.runner_frames)
    assert row(store, runs[0]).state == "RUNNING" and row(store, runs[2]).state == "PENDING"
    # A second pass finds both slots held (counted from the store).
    _, again = run_at(store, T0 + dt.timedelta(seconds=6), assign_runners, hosts(), ENDPOINT)
    assert again.runner_frames == []
    # A finished body frees its slot for the waiting run.
    run_at(store, T0 + dt.timedelta(seconds=7), finish_run, runs[0], succeeded=True,
           result_json="1", error=None)  # fmt: skip
    _, freed = run_at(store, T0 + dt.timedelta(seconds=8), assign_runners, hosts(), ENDPOINT)
    agent_of_first = next(f.agent_id for f in effects.runner_frames if f.flow_run_id == runs[0])
    assert [(f.flow_run_id, f.agent_id) for f in freed.runner_frames] == [(runs[2], agent_of_first)]


def test_runner_target_selects_the_agent(store: Store) -> None:
    run_id = hosted_run(store, "cloud=gcp")
    _, effects = run_at(store, T0, assign_runners, hosts(), ENDPOINT)
    assert [(f.flow_run_id, f.agent_id) for f in effects.runner_frames] == [(run_id, "a2")]


def test_a_call_from_an_older_runner_epoch_is_refused(store: Store) -> None:
    run_id = hosted_run(store)
    run_at(store, T0, assign_runners, hosts(), ENDPOINT)
    run_at(store, T0, check_runner_epoch, run_id, 1)  # the current runner
    run_at(store, T0, check_runner_epoch, run_id, None)  # not a runner: not fenced
    with pytest.raises(ConflictError, match="superseded by runner epoch 1"):
        run_at(store, T0, check_runner_epoch, run_id, 0)


def _lose_runner(store: Store, run_id: str, at: dt.datetime) -> None:
    run_at(store, at, crash_runs_with_lapsed_leases, T0 - dt.timedelta(hours=1), 1.0)


def test_a_lapsed_lease_resumes_the_run_on_another_agent(store: Store) -> None:
    run_id = hosted_run(store)
    _, first = run_at(store, T0, assign_runners, hosts(), ENDPOINT)
    lost_agent = first.runner_frames[0].agent_id
    _lose_runner(store, run_id, T0 + dt.timedelta(minutes=5))
    run = row(store, run_id)
    assert run.state == "RUNNING" and run.wants_runner and run.runner_resumes == 1
    # The lost runner is fenced at once (it may only be cut off), before any hand-out.
    assert run.runner_epoch == 2
    with pytest.raises(ConflictError, match="superseded by runner epoch 2"):
        run_at(store, T0, check_runner_epoch, run_id, 1)
    _, second = run_at(store, T0 + dt.timedelta(minutes=6), assign_runners, hosts(), ENDPOINT)
    (frame,) = second.runner_frames
    assert frame.agent_id != lost_agent and frame.runner_epoch == 3
    with pytest.raises(ConflictError, match="superseded by runner epoch 3"):
        run_at(store, T0, check_runner_epoch, run_id, 1)


def _fail_policy(store: Store, run_id: str, policy: str, max_resumes: int) -> None:
    def change(session: object) -> None:
        run = session.get(FlowRunRow, run_id)  # type: ignore[attr-defined]
        run.on_runner_lost, run.max_runner_resumes = policy, max_resumes

    store.run_sync(change)


def test_on_runner_lost_fail_fails_the_run_with_the_reason(store: Store) -> None:
    run_id = hosted_run(store)
    run_at(store, T0, assign_runners, hosts(), ENDPOINT)
    _fail_policy(store, run_id, "fail", 3)
    _lose_runner(store, run_id, T0 + dt.timedelta(minutes=5))
    run = row(store, run_id)
    assert run.state == "FAILED" and not run.wants_runner
    assert run.error is not None and run.error.error_class == "lost_agent"
    assert "stopped renewing its lease" in run.error.message
    assert run.error.message.endswith("on_runner_lost=fail")


def test_no_resumes_left_fails_the_run(store: Store) -> None:
    run_id = hosted_run(store)
    _fail_policy(store, run_id, "resume", 1)
    at = T0
    for _ in range(2):
        run_at(store, at, assign_runners, hosts(), ENDPOINT)
        at += dt.timedelta(minutes=5)
        _lose_runner(store, run_id, at)
    run = row(store, run_id)
    assert run.state == "FAILED" and run.runner_resumes == 1
    assert run.error is not None and "1 resume used of max_runner_resumes=1" in run.error.message


def test_a_waiting_hosted_run_says_what_it_waits_for(store: Store) -> None:
    from control_plane.usecases.run_waits import run_waiting_for

    run_id = hosted_run(store, "cloud=azure")

    def why(known: list[RunnerHost] | None) -> str:
        return store.run_sync(lambda s: run_waiting_for(s, run_id, T0, known))

    # No connected agent matching the target offers runner slots: say how to get one.
    for known in ([], hosts()):
        assert why(known) == (
            "waiting for an agent with runner slots matching 'cloud=azure': no connected agent "
            "that matches offers any (start one with `meridian agent start ... --runner-slots N`)"
        )
    # One matches (its slots are busy) or the caller does not know the agents: a free slot.
    azure = [RunnerHost("a3", "a3", "azure-demo", {"cloud": "azure"}, 1, 0)]
    assert why(azure) == "waiting for a free runner slot on an agent matching 'cloud=azure'"
    assert why(None) == "waiting for a free runner slot on an agent matching 'cloud=azure'"


def test_a_runner_that_never_started_is_handed_out_again_without_using_a_resume(
    store: Store,
) -> None:
    from control_plane.usecases.runners import MAX_START_FAILURES, runner_exited

    run_id = hosted_run(store)
    _fail_policy(store, run_id, "fail", 3)  # even a run that may not lose its runner
    at = T0
    for failure in range(1, MAX_START_FAILURES + 1):
        _, handed = run_at(store, at, assign_runners, hosts(), ENDPOINT)
        (frame,) = handed.runner_frames
        _, effects = run_at(store, at, runner_exited, frame.agent_id, run_id, frame.runner_epoch,
                            -2, "the agent has no free runner slot")  # fmt: skip
        run = row(store, run_id)
        assert run.state == "RUNNING" and run.wants_runner and effects.runners_wanted
        assert run.runner_resumes == 0 and run.runner_epoch == frame.runner_epoch + 1
        assert run.trigger_detail == {"runner_start_failures": failure}
        at += dt.timedelta(seconds=1)
    # One more is a lost runner like any other: with on_runner_lost=fail the run fails.
    _, handed = run_at(store, at, assign_runners, hosts(), ENDPOINT)
    (frame,) = handed.runner_frames
    run_at(store, at, runner_exited, frame.agent_id, run_id, frame.runner_epoch, -3,
           "could not start: bundle unavailable")  # fmt: skip
    run = row(store, run_id)
    assert run.state == "FAILED" and run.error is not None
    assert "could not start: bundle unavailable" in run.error.message
    messages = store.run_sync(
        lambda s: [
            e.message
            for e in s.query(EventRow).filter_by(flow_run_id=run_id, kind="run.runner_lost")
        ]
    )
    assert len(messages) == MAX_START_FAILURES + 1
    assert "not counted as a resume" in messages[0] and "start failure 1 of" in messages[0]
