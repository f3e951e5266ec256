"""@step / @flow: validation at decoration time, keys, JSON inputs, in-process calls."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from meridian import Permanent, SelectorError, Step, ValidationError, flow, step, wait
from meridian.models import StepOutcome, StepSubmission, SubmittedStep
from meridian.sdk.context import FlowContext, activate


class CustomError(Exception):
    pass


@step(target="cloud=aws,region=us-east-1", retries=3, retry_on=(ValueError, CustomError))
def add(a: int, b: int = 0) -> int:
    return a + b


@step
def echo(value: object) -> object:
    return value


@step(key=lambda region, **_: f"deploy-{region}")
def deploy(region: str, version: str = "1") -> str:
    return f"{region}:{version}"


class DataFrame:
    pass


@step
def transform(df: object, factor: int = 1) -> None: ...


class RecordingSubmitter:
    """Stands in for the control plane's SubmitSteps (answers, never completes steps)."""

    def __init__(self) -> None:
        self.calls: list[list[StepSubmission]] = []

    def submit_steps(
        self, flow_run_id: str, submissions: Sequence[StepSubmission]
    ) -> list[SubmittedStep]:
        self.calls.append(list(submissions))
        return [SubmittedStep(s.key, f"sr-{s.key}", "PENDING") for s in submissions]

    @property
    def keys(self) -> list[str]:
        return [s.key for call in self.calls for s in call]


def test_step_object_and_spec() -> None:
    assert isinstance(add, Step)
    assert add.__meridian_step__ is True
    assert add.fn(1, 2) == 3
    assert add.name == "add"
    spec = add.spec
    assert spec.module == __name__
    assert spec.function == "add"
    assert spec.target == "cloud=aws,region=us-east-1"
    assert spec.retries == 3
    assert spec.retry_on == ("builtins.ValueError", f"{__name__}.CustomError")
    assert echo.spec.provider == "process" and echo.spec.target == ""


def test_outside_a_flow_steps_run_in_process() -> None:
    assert add(2, b=5) == 7
    assert add.submit(1, 1).result() == 2
    assert wait(add.map([1, 2, 3], b=10)) == [11, 12, 13]

    @flow
    def local_flow(n: int) -> int:
        return add(n, 1)

    assert local_flow(4) == 5


def test_invalid_selector_names_the_step_and_location() -> None:
    with pytest.raises(SelectorError) as info:

        @step(target="cloud in (aws")
        def broken() -> None: ...

    message = str(info.value)
    assert "step 'broken'" in message
    assert f"{__name__}:" in message
    assert "cloud in (aws" in message


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"retries": -1}, "retries"),
        ({"retries": 1.5}, "retries"),
        ({"timeout": -5}, "timeout"),
        ({"schedule_timeout": -1}, "schedule_timeout"),
        ({"retry_backoff": 0.5}, "retry_backoff"),
        ({"retry_jitter": 1.5}, "retry_jitter"),
        ({"retry_delay": float("nan")}, "retry_delay"),
        ({"retry_on": (ValueError, "KeyError")}, "retry_on"),
        ({"retry_on": 42}, "retry_on"),
        ({"provider": ""}, "provider"),
        ({"name": "a#b"}, "name"),
        ({"key": "x#1"}, "key"),
        ({"options": {"cpu": {1, 2}}}, "options"),
        ({"isolation": "fresh"}, "isolation"),
        ({"isolation": None}, "isolation"),
    ],
)
def test_bad_step_arguments_are_refused_at_decoration(kwargs: dict, argument: str) -> None:
    with pytest.raises(ValidationError) as info:

        @step(**kwargs)
        def bad() -> None: ...

    assert "step 'bad'" in str(info.value)
    assert argument in str(info.value)


def test_isolation_defaults_to_warm_and_process_asks_for_a_fresh_interpreter() -> None:
    @step
    def shared() -> None: ...

    @step(isolation="process")
    def clean() -> None: ...

    assert (shared.spec.isolation, clean.spec.isolation) == ("warm", "process")


def test_single_exception_class_and_permanent_in_retry_on() -> None:
    @step(retry_on=Permanent, name="custom-name", options={"cpu": 2})
    def s() -> None: ...

    assert s.spec.retry_on == ("meridian.core.errors.Permanent",)
    assert s.name == "custom-name" and s.spec.function.endswith("s")
    assert json.loads(s.spec.options_json) == {"cpu": 2}


def test_generated_keys_count_calls_per_name() -> None:
    submitter = RecordingSubmitter()
    with activate(FlowContext("run-1", submitter)):
        add.submit(1)
        echo.submit("x")
        add.submit(2)
        deploy.submit("eu")
        deploy.with_options(key="manual").submit("us")
        add.map([3, 4])
    assert submitter.keys == ["add#1", "echo#1", "add#2", "deploy-eu", "manual", "add#3", "add#4"]
    assert submitter.calls[0][0].spec == add.spec
    assert json.loads(submitter.calls[0][0].inputs_json) == {"args": [1], "kwargs": {}}


def test_same_key_twice_returns_the_same_future_without_resubmitting() -> None:
    submitter = RecordingSubmitter()
    with activate(FlowContext("run-1", submitter)):
        first = deploy.submit("eu")
        second = deploy.submit("eu", version="2")
    assert first is second
    assert submitter.keys == ["deploy-eu"]


def test_map_is_chunked_into_one_rpc_per_chunk() -> None:
    submitter = RecordingSubmitter()
    with activate(FlowContext("run-1", submitter, chunk_size=500)):
        futures = echo.map(range(1201))
    assert len(futures) == 1201
    assert [len(call) for call in submitter.calls] == [500, 500, 201]
    assert futures[0].step_run_id == "sr-echo#1"


def test_a_map_of_small_items_is_one_request_and_large_inputs_split_by_bytes() -> None:
    submitter = RecordingSubmitter()
    with activate(FlowContext("run-1", submitter)):
        echo.map(range(10_000))
    assert [len(call) for call in submitter.calls] == [10_000]
    assert all(sub.spec is echo.spec for sub in submitter.calls[0])  # one spec: one batch
    submitter = RecordingSubmitter()
    with activate(FlowContext("run-1", submitter, chunk_bytes=100_000)):
        echo.map(["x" * 30_000] * 7)  # three items fit a chunk, a fourth would not
    assert [len(call) for call in submitter.calls] == [3, 3, 1]
    submitter = RecordingSubmitter()
    with activate(FlowContext("run-1", submitter, chunk_bytes=100_000)):
        echo.map(["é" * 20_000] * 3)  # 40,000 bytes each in UTF-8, not 20,000
    assert [len(call) for call in submitter.calls] == [2, 1]


def test_non_json_argument_is_refused_naming_the_argument() -> None:
    submitter = RecordingSubmitter()
    with activate(FlowContext("run-1", submitter)):
        with pytest.raises(ValidationError) as info:
            transform.submit(DataFrame())
        assert str(info.value) == (
            "argument 'df' of step 'transform' is not JSON-serializable (got DataFrame)"
        )
        with pytest.raises(ValidationError, match=r"argument 'value' .*set at \['a'\]"):
            echo.submit({"a": {1}})
        with pytest.raises(ValidationError, match="bad arguments"):
            add.submit(1, 2, 3)  # type: ignore[call-arg]
    assert submitter.calls == []


def test_steps_defined_inside_functions_cannot_be_dispatched() -> None:
    @step
    def local() -> None: ...

    with (
        activate(FlowContext("run-1", RecordingSubmitter())),
        pytest.raises(ValidationError, match="module level"),
    ):
        local.submit()


class StingySubmitter(RecordingSubmitter):
    """Answers every call as ended, with room for two outcomes per answer."""

    def submit_steps(
        self, flow_run_id: str, submissions: Sequence[StepSubmission]
    ) -> list[SubmittedStep]:
        self.calls.append(list(submissions))
        answers = []
        for i, s in enumerate(submissions):
            outcome = StepOutcome(f"sr-{s.key}", s.key, "COMPLETED", json.dumps(s.key))
            answers.append(
                SubmittedStep(s.key, f"sr-{s.key}", "COMPLETED", True, outcome)
                if i < 2
                else SubmittedStep(s.key, f"sr-{s.key}", "COMPLETED", True, outcome_omitted=True)
            )
        return answers


def test_outcomes_left_out_of_an_answer_are_asked_for_again() -> None:
    submitter = StingySubmitter()
    with activate(FlowContext("run-1", submitter)):
        futures = echo.map(range(5))
    assert [f.result(timeout=0) for f in futures] == [f"echo#{i}" for i in range(1, 6)]
    assert [len(call) for call in submitter.calls] == [5, 3, 1]
