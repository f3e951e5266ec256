"""A person's ``runs resume`` / ``runs retry`` of a hosted run (a deployment's, ``run
--remote``) on a real store: the run goes back to a hosted runner (PENDING, wanting one) unless
the caller asks to run the body ``here``; it takes its flow's limits again before a runner;
a retry is a new hosted run of the same version, target and policy; a local run resumed while
its limits are taken waits for them (PENDING) instead of running over them."""

from __future__ import annotations

import datetime as dt

import pytest

from control_plane.orchestration.runner_plan import RunnerHost
from control_plane.store.db import Store
from control_plane.store.models import FlowRunRow, LimitSlotRow
from control_plane.usecases.limits import set_limit
from control_plane.usecases.run_limits import start_waiting_runs
from control_plane.usecases.runners import assign_runners, create_hosted_run
from control_plane.usecases.runs import (
    create_run,
    finish_run,
    resume_run_for_runner,
    retry_run_for_runner,
)
from meridian.core.errors import ConflictError
from tests.control_plane.usecases.helpers import T0, run_at
from tests.control_plane.usecases.test_runners import ENDPOINT, hosts

BUNDLE = "b" * 64


def failed_hosted_run(
    store: Store, *, target: str = "cloud=gcp", limits: tuple[str, ...] = ()
) -> str:
    run, _ = run_at(store, T0, create_hosted_run, flow_name="etl", entrypoint="flows.py:etl",
                    parameters_json='{"day": "2026-12-04"}', bundle_sha256=BUNDLE,
                    runner_target=target, concurrency=limits)  # fmt: skip
    run_at(store, T0, assign_runners, hosts(), ENDPOINT)
    run_at(store, T0 + dt.timedelta(seconds=1), finish_run, run.id, succeeded=False,
           result_json="", error=None)  # fmt: skip
    return run.id


def row(store: Store, run_id: str) -> FlowRunRow:
    return store.run_sync(lambda s: s.get(FlowRunRow, run_id))


def test_resume_of_a_hosted_run_hands_it_to_a_hosted_runner(store: Store) -> None:
    run_id = failed_hosted_run(store)
    before = row(store, run_id)
    assert before.state == "FAILED" and before.runner_epoch == 1
    (_, watermark, token), effects = run_at(
        store, T0 + dt.timedelta(seconds=5), resume_run_for_runner, run_id
    )
    assert token == "" and watermark > 0  # nobody but a hosted runner drives it
    assert effects.runners_wanted
    after = row(store, run_id)
    assert after.state == "PENDING" and after.wants_runner and after.runner_resumes == 0
    assert after.runner_epoch == 2  # whatever ran it before is fenced
    assert after.ended_at is None and after.error is None and after.resumed_at is not None
    _, handed = run_at(store, T0 + dt.timedelta(seconds=6), assign_runners, hosts(), ENDPOINT)
    (frame,) = handed.runner_frames
    assert frame.flow_run_id == run_id and frame.agent_id == "a2"  # still its target
    assert frame.runner_epoch == 3 and frame.runner_token
    again = row(store, run_id)
    assert again.state == "RUNNING" and again.started_at == before.started_at


def test_resume_here_runs_the_hosted_run_in_the_callers_process(store: Store) -> None:
    run_id = failed_hosted_run(store)
    (_, _, token), _ = run_at(store, T0 + dt.timedelta(seconds=5), resume_run_for_runner,
                                run_id, here=True)  # fmt: skip
    after = row(store, run_id)
    assert token and after.state == "RUNNING" and not after.wants_runner
    # No hosted runner holds it: a lapsed lease crashes it like a local run's.
    assert after.runner_agent_id is None and after.runner_epoch == 2


def test_retry_of_a_hosted_run_is_a_new_hosted_run_of_the_same_target(store: Store) -> None:
    run_id = failed_hosted_run(store, target="cloud=aws")
    (new, token), _ = run_at(store, T0 + dt.timedelta(seconds=5), retry_run_for_runner, run_id)
    assert token == ""
    copy = row(store, new.id)
    original = row(store, run_id)
    assert copy.id != run_id and copy.retry_of == run_id and copy.trigger == "retry"
    assert copy.state == "PENDING" and copy.wants_runner
    assert (copy.runner_target, copy.on_runner_lost, copy.max_runner_resumes) == (
        original.runner_target,
        original.on_runner_lost,
        original.max_runner_resumes,
    )
    assert copy.parameters_json == original.parameters_json
    assert copy.bundle_sha256 == original.bundle_sha256
    _, handed = run_at(store, T0 + dt.timedelta(seconds=6), assign_runners, hosts(), ENDPOINT)
    assert [(f.flow_run_id, f.agent_id) for f in handed.runner_frames] == [(new.id, "a1")]


def test_a_resumed_hosted_run_takes_its_flow_limits_again(store: Store) -> None:
    run_at(store, T0, set_limit, "db", 1)
    run_id = failed_hosted_run(store, target="", limits=("db",))
    slots = store.run_sync(lambda s: s.query(LimitSlotRow).count())
    assert slots == 0  # released when the run failed
    # Meanwhile another run holds the only slot.
    other, _ = run_at(store, T0, create_hosted_run, flow_name="etl", entrypoint="flows.py:etl",
                      parameters_json="{}", bundle_sha256=BUNDLE, runner_target="",
                      concurrency=("db",))  # fmt: skip
    run_at(store, T0 + dt.timedelta(seconds=2), assign_runners, hosts(), ENDPOINT)
    run_at(store, T0 + dt.timedelta(seconds=3), resume_run_for_runner, run_id)
    _, waiting = run_at(store, T0 + dt.timedelta(seconds=4), assign_runners, hosts(), ENDPOINT)
    assert waiting.runner_frames == []  # no runner before it holds "db"
    run_at(store, T0 + dt.timedelta(seconds=5), finish_run, other.id, succeeded=True,
           result_json="1", error=None)  # fmt: skip
    _, handed = run_at(store, T0 + dt.timedelta(seconds=6), assign_runners, hosts(), ENDPOINT)
    assert [f.flow_run_id for f in handed.runner_frames] == [run_id]


def test_a_resumed_local_run_waits_for_its_taken_limits(store: Store) -> None:
    run_at(store, T0, set_limit, "db", 1)

    def local_run() -> str:
        run, _ = run_at(store, T0, create_run, flow_name="load", entrypoint="flows.py:load",
                        parameters_json="{}", bundle_sha256=BUNDLE, trigger="manual",
                        concurrency=("db",))  # fmt: skip
        return run.id

    first = local_run()
    run_at(store, T0 + dt.timedelta(seconds=1), finish_run, first, succeeded=False,
           result_json="", error=None)  # fmt: skip
    second = local_run()  # holds "db" now
    assert row(store, second).state == "RUNNING"
    (_, _, token), _ = run_at(store, T0 + dt.timedelta(seconds=2), resume_run_for_runner, first)
    assert token and row(store, first).state == "PENDING"  # in line, not running over it
    run_at(store, T0 + dt.timedelta(seconds=3), finish_run, second, succeeded=True,
           result_json="1", error=None)  # fmt: skip
    started, _ = run_at(store, T0 + dt.timedelta(seconds=4), start_waiting_runs)
    assert started == 1 and row(store, first).state == "RUNNING"
    assert row(store, first).started_at == T0  # its first start, not the resumed one


def test_only_ended_runs_resume(store: Store) -> None:
    run, _ = run_at(store, T0, create_hosted_run, flow_name="etl", entrypoint="flows.py:etl",
                    parameters_json="{}", bundle_sha256=BUNDLE, runner_target="")  # fmt: skip
    with pytest.raises(ConflictError, match="only CRASHED, FAILED or CANCELLED runs resume"):
        run_at(store, T0, resume_run_for_runner, run.id)


def test_a_replayed_parent_reopens_its_failed_deployment_child(store: Store) -> None:
    from control_plane.usecases.deployment_triggers import TriggerSource
    from control_plane.usecases.subflows import trigger_child_deployment
    from tests.control_plane.usecases.helpers import new_run
    from tests.control_plane.usecases.test_deployments import deploy

    deploy(store)
    parent = new_run(store)

    def ask() -> tuple[str, bool, str]:
        outcome, _ = run_at(store, T0 + dt.timedelta(seconds=9), trigger_child_deployment,
                            "nightly", {"day": "2026-12-04"}, caller_epoch=None,
                            source=TriggerSource("subflow", f"run:{parent}"),
                            parent=(parent, "nightly#1"))  # fmt: skip
        assert outcome.flow_run_id is not None
        return outcome.flow_run_id, outcome.existing, outcome.state

    child, existing, state = ask()
    assert not existing and state == "PENDING"
    run_at(store, T0, assign_runners, [*hosts(), *batch_host()], ENDPOINT)
    run_at(store, T0 + dt.timedelta(seconds=1), finish_run, child, succeeded=False,
           result_json="", error=None)  # fmt: skip
    # The parent is resumed and its body asks for the same child again: reopened, not a
    # second child and not the old failure.
    again, existing, state = ask()
    assert (again, existing, state) == (child, True, "PENDING")
    assert row(store, child).wants_runner
    # A completed child is given back as it is.
    run_at(store, T0, assign_runners, [*hosts(), *batch_host()], ENDPOINT)
    run_at(store, T0 + dt.timedelta(seconds=2), finish_run, child, succeeded=True,
           result_json="1", error=None)  # fmt: skip
    assert ask() == (child, True, "COMPLETED")


def batch_host() -> list[RunnerHost]:
    return [RunnerHost("a3", "a3", "onprem", {"pool": "batch"}, 1, 0)]
