"""meridian.context(): its value in a step scope, in a flow scope, and nowhere else."""

from __future__ import annotations

import threading

import pytest

import meridian
from meridian.core import runcontext
from meridian.core.runcontext import NoRunContext, RunContext

STEP = RunContext(
    run_id="run-1",
    step_key="load#2",
    step_name="load",
    attempt_id="att-9",
    attempt_number=2,
    environment="onprem",
    agent_id="agent-1",
)


def test_outside_a_step_and_a_flow_context_raises_a_clear_error() -> None:
    with pytest.raises(NoRunContext, match="only available inside a step"):
        meridian.context()


def test_step_scope_sets_the_context_for_its_block_only() -> None:
    with runcontext.step_scope(STEP):
        assert meridian.context() is STEP
        assert runcontext.current_step() is STEP
        seen: list[RunContext] = []
        # Threads the step starts see it too (a process-wide value, not a context variable).
        worker = threading.Thread(target=lambda: seen.append(meridian.context()))
        worker.start()
        worker.join()
        assert seen == [STEP]
    assert runcontext.current_step() is None
    with pytest.raises(NoRunContext):
        meridian.context()


def test_step_scope_resets_even_when_the_step_raises() -> None:
    with pytest.raises(ZeroDivisionError), runcontext.step_scope(STEP):
        _ = 1 / 0
    assert runcontext.current_step() is None


def test_flow_scope_is_per_thread() -> None:
    flow_ctx = RunContext(run_id="run-2", flow_name="nightly")
    with runcontext.flow_scope(flow_ctx):
        assert meridian.context() == flow_ctx
        assert meridian.context().step_key is None and meridian.context().deployment is None
        errors: list[BaseException] = []

        def other_thread() -> None:
            try:
                meridian.context()
            except NoRunContext as exc:
                errors.append(exc)

        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
        assert len(errors) == 1
    with pytest.raises(NoRunContext):
        meridian.context()


def test_json_round_trip_keeps_every_field_and_ignores_unknown_ones() -> None:
    raw = {**STEP.to_dict(), "from_a_newer_agent": 1}
    assert RunContext.from_dict(raw) == STEP
    assert STEP.to_dict()["deployment"] is None  # the field exists for deployments to fill


@pytest.mark.parametrize(
    "raw",
    [
        [],
        {"step_key": "a#1"},  # no run id
        {"run_id": ""},
        {"run_id": "r", "attempt_number": 0},
        {"run_id": "r", "attempt_number": "2"},
        {"run_id": "r", "attempt_number": True},
        {"run_id": "r", "step_key": 5},
        {"run_id": "r", "environment": "x" * (runcontext.MAX_FIELD_CHARS + 1)},
        {"run_id": "r", "extra": "y" * runcontext.MAX_CONTEXT_BYTES},
    ],
)
def test_malformed_contexts_are_refused(raw: object) -> None:
    with pytest.raises(ValueError):
        RunContext.from_dict(raw)


def test_spec_context_wins_over_the_environment_and_the_environment_is_the_fallback() -> None:
    env = {
        "MERIDIAN_FLOW_RUN_ID": "run-env",
        "MERIDIAN_STEP_KEY": "load#3",
        "MERIDIAN_ATTEMPT_ID": "att-env",
        "MERIDIAN_ATTEMPT_NUMBER": "4",
    }
    assert runcontext.step_context_of({"context": STEP.to_dict()}, env) == STEP
    from_env = runcontext.step_context_of({}, env)
    assert from_env == RunContext(
        run_id="run-env", step_key="load#3", step_name="load", attempt_id="att-env",
        attempt_number=4,
    )  # fmt: skip
    assert runcontext.step_context_of({}, {}) is None
    bad_number = runcontext.step_context_of({}, {**env, "MERIDIAN_ATTEMPT_NUMBER": "x"})
    assert bad_number is not None and bad_number.attempt_number is None
