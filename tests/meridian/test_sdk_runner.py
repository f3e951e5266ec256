"""run_flow end to end: loader, bundle, ControlClient and the watcher against the TLS fake."""

from __future__ import annotations

import datetime as dt
import enum
import itertools
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meridian.client import ControlClient
from meridian.models import CancelResult, RunUpdate
from meridian.sdk import runner as runner_module
from meridian.sdk.runner import RunInterrupted, _run_body, execute_body, run_flow
from tests.meridian.test_client import FakeServer
from tests.support.deadlines import DEADLINE_S


class _Colour(enum.Enum):
    RED = "red"
    GREEN = "green"


FLOWS = """
import datetime
import time
from meridian import StepFailed, flow, step, wait

@step(target="cloud=aws,region=us-east-1")
def add(a: int, b: int) -> int:
    return a + b

@step(target="cloud=gcp")
def slow(x: int) -> int:
    time.sleep(0.4)
    return x * 10

@step(target="site=dc1", retries=2)
def boom(message: str) -> None:
    raise ValueError(message)

@step
def square(x: int) -> int:
    return x * x

@flow
def on_day(day: datetime.date) -> str:
    return type(day).__name__

@flow(name="where")
def where_flow() -> dict:
    import meridian

    return meridian.context().to_dict()

@flow
def sequential(n: int = 4) -> int:
    total = 0
    for i in range(n):
        total = add(total, i)
    return total

@flow
def parallel() -> list:
    futures = [slow.submit(i) for i in range(3)]
    return [f.result() for f in futures]

@flow
def fanout(n: int) -> int:
    return sum(wait(square.map(range(n))))

@flow
def recovers() -> dict:
    try:
        boom("bad input")
    except StepFailed as exc:
        return {"type": exc.error_type, "message": exc.remote_message,
                "has_tb": "ValueError: bad input" in exc.remote_traceback,
                "after": add(1, 1)}
    return {}

@flow
def fails() -> None:
    add(1, 2)
    boom("no luck")

@flow
def returns_junk() -> object:
    return {1, 2}
"""

_names = itertools.count()


@pytest.fixture
def flows_file(tmp_path: Path) -> Path:
    # A fresh module name per test: each test loads its own copy of the file.
    path = tmp_path / "project" / f"runner_flows_{next(_names)}.py"
    path.parent.mkdir()
    path.write_text(textwrap.dedent(FLOWS))
    return path


def test_sequential_steps(client: ControlClient, fake_server: FakeServer, flows_file: Path) -> None:
    updates: list[RunUpdate] = []
    outcome = run_flow(client, f"{flows_file}:sequential", {"n": "4"}, on_update=updates.append)
    assert outcome.state == "COMPLETED" and outcome.succeeded
    assert outcome.result == 0 + 1 + 2 + 3
    fake = fake_server.fake
    assert fake.submit_calls == [["add#1"], ["add#2"], ["add#3"], ["add#4"]]
    assert fake.finished[outcome.flow_run_id].result_json == "6"
    run = fake.runs[outcome.flow_run_id]
    assert run.flow_name == "sequential" and run.parameters_json == '{"n": 4}'
    assert run.bundle_sha256 in fake.bundles
    assert updates[-1].run_state == "COMPLETED"
    assert [u.event_id for u in updates] == sorted({u.event_id for u in updates})


def test_the_flow_body_sees_its_run_and_flow_name(client: ControlClient, flows_file: Path) -> None:
    import meridian

    outcome = run_flow(client, f"{flows_file}:where", {})
    assert outcome.result == {
        "run_id": outcome.flow_run_id, "flow_name": "where", "step_key": None, "step_name": None,
        "attempt_id": None, "attempt_number": None, "environment": None, "deployment": None,
        "agent_id": None,
    }  # fmt: skip
    with pytest.raises(meridian.NoRunContext):
        meridian.context()  # the body's context ended with it


def test_a_hosted_body_sees_its_agents_environment(client: ControlClient, flows_file: Path) -> None:
    from meridian.core.bundle import pack_directory
    from meridian.models import RunToExecute
    from meridian.sdk.runner import _execute_stored

    bundle = pack_directory(flows_file.parent)
    client.ensure_bundle(bundle)
    entrypoint = f"{flows_file.name}:where"
    run_id = client.create_run("where", entrypoint, {}, bundle.sha256)
    target = RunToExecute(run_id, "where", entrypoint, "{}", bundle.sha256, "RUNNING")
    outcome = _execute_stored(  # as meridian.flowexec calls it
        client, target, None, None, 0, bundle_root=flows_file.parent, environment="dc1"
    )
    assert outcome.result["environment"] == "dc1" and outcome.result["run_id"] == run_id


def test_meridian_run_takes_the_types_a_deployment_takes(
    client: ControlClient, fake_server: FakeServer, flows_file: Path
) -> None:
    outcome = run_flow(client, f"{flows_file}:on_day", {"day": "2026-03-01"})
    assert outcome.result == "date"
    assert fake_server.fake.runs[outcome.flow_run_id].parameters_json == '{"day": "2026-03-01"}'


def test_submit_runs_steps_in_parallel(
    client: ControlClient, fake_server: FakeServer, flows_file: Path
) -> None:
    outcome = run_flow(client, f"{flows_file}:parallel", {})
    assert outcome.result == [0, 10, 20]
    # Three submissions went out before the body waited on any of them (no timing needed).
    assert len(fake_server.fake.submit_calls) == 3


def test_map_fans_out_in_one_rpc_per_chunk(
    client: ControlClient, fake_server: FakeServer, flows_file: Path
) -> None:
    outcome = run_flow(client, f"{flows_file}:fanout", {"n": "1100"})
    assert outcome.result == sum(i * i for i in range(1100))
    assert [len(keys) for keys in fake_server.fake.submit_calls] == [1100]
    assert fake_server.fake.submit_calls[0][:2] == ["square#1", "square#2"]


def test_step_failure_is_catchable_with_remote_traceback(
    client: ControlClient, flows_file: Path
) -> None:
    outcome = run_flow(client, f"{flows_file}:recovers", {})
    assert outcome.state == "COMPLETED"
    assert outcome.result == {
        "type": "builtins.ValueError",
        "message": "bad input",
        "has_tb": True,
        "after": 2,
    }


def test_flow_failure_is_reported_with_finish_run(
    client: ControlClient, fake_server: FakeServer, flows_file: Path
) -> None:
    outcome = run_flow(client, f"{flows_file}:fails", {})
    assert outcome.state == "FAILED" and outcome.result is None
    assert outcome.error is not None
    assert outcome.error.type == "meridian.core.errors.StepFailed"
    assert "meridian.core.errors.MeridianError" in outcome.error.type_mro
    assert "boom#1" in outcome.error.message
    recorded = fake_server.fake.finished[outcome.flow_run_id]
    assert not recorded.succeeded
    assert recorded.error.error_class == "permanent"
    assert "Remote traceback of step boom#1" in recorded.error.traceback
    assert "ValueError: no luck" in recorded.error.traceback


def test_non_json_flow_result_fails_the_run(client: ControlClient, flows_file: Path) -> None:
    outcome = run_flow(client, f"{flows_file}:returns_junk", {})
    assert outcome.state == "FAILED"
    assert outcome.error is not None and "not JSON-serializable (got set)" in outcome.error.message


def test_watch_stream_reconnects_from_the_last_event(
    client: ControlClient, fake_server: FakeServer, flows_file: Path
) -> None:
    fake_server.fake.break_watch_after = 2
    updates: list[RunUpdate] = []
    outcome = run_flow(client, f"{flows_file}:sequential", {"n": "5"}, on_update=updates.append)
    assert outcome.result == 10
    calls = fake_server.fake.watch_calls
    assert len(calls) == 2 and calls[0] == 0 and calls[1] == updates[1].event_id
    ids = [u.event_id for u in updates]
    assert ids == sorted(set(ids)) and len(ids) == 6  # five steps + the run's end, once each


def test_bad_parameters_fail_before_a_run_exists(
    client: ControlClient, fake_server: FakeServer, flows_file: Path
) -> None:
    from meridian import ValidationError

    with pytest.raises(ValidationError, match="parameter 'n'"):
        run_flow(client, f"{flows_file}:sequential", {"n": "many"})
    assert fake_server.fake.runs == {}


def _typed_body(day: dt.date, colour: _Colour = _Colour.RED, n: int = 1) -> dict:
    return {"day": type(day).__name__, "colour_is_member": isinstance(colour, _Colour), "n": n}


def test_the_body_gets_its_json_parameters_as_declared_types() -> None:
    succeeded, result, _, _ = _run_body(_typed_body, {"day": "2026-03-01", "colour": "GREEN"})
    assert succeeded and result == {"day": "date", "colour_is_member": True, "n": 1}


def test_a_parameter_that_does_not_convert_fails_the_run_naming_it() -> None:
    succeeded, _, error, shared = _run_body(_typed_body, {"day": "2026-03-01", "colour": "BLUE"})
    assert not succeeded and error is not None and shared is not None
    assert error.type == "meridian.core.errors.ValidationError"
    assert error.message.startswith("parameter 'colour': expected one of RED, GREEN")


class _InterruptedClient:
    """A runner client for an interrupted body: the watch stream ends with the run's final
    state once the cancel was asked for (unless the agents never confirm)."""

    def __init__(self, *, confirms: bool = True, second_interrupt: bool = False) -> None:
        self.cancelled = threading.Event()
        self.stopped = threading.Event()
        self.confirms = confirms
        self.second_interrupt = second_interrupt
        self.finished: list[bool] = []
        self.reasons: list[str] = []

    def watch_run(self, flow_run_id: str, after_event_id: int = 0) -> _Stream:
        return _Stream(self)

    def updates(self) -> Iterator[RunUpdate]:
        self.cancelled.wait(DEADLINE_S)
        if not self.confirms:
            self.stopped.wait(DEADLINE_S)
            return
        yield RunUpdate(event_id=1, at=None, kind="run.cancelled", run_state="CANCELLED")

    def renew_runner_lease(self, flow_run_id: str, lease_s: float) -> str:
        return "RUNNING"

    def finish_run(self, flow_run_id: str, succeeded: bool, *args: Any) -> str:
        self.finished.append(succeeded)
        return "FAILED"

    def cancel_run(self, run_id_or_prefix: str, reason: str = "") -> CancelResult:
        self.reasons.append(reason)
        if self.second_interrupt:
            raise KeyboardInterrupt
        self.cancelled.set()
        return CancelResult(run_id_or_prefix, "CANCELLING", 1)


class _Stream:
    """A watch stream the runner can cancel, like a gRPC one."""

    def __init__(self, fake: _InterruptedClient) -> None:
        self._fake = fake

    def __iter__(self) -> Iterator[RunUpdate]:
        return self._fake.updates()

    def cancel(self) -> None:
        self._fake.stopped.set()


def _interrupted_body() -> None:
    raise KeyboardInterrupt


def test_an_interrupt_cancels_the_run_instead_of_failing_it() -> None:
    fake = _InterruptedClient()
    with pytest.raises(RunInterrupted) as raised:
        execute_body(fake, "run-1", _interrupted_body, {}, canceller=fake)  # type: ignore[arg-type]
    assert raised.value.state == "CANCELLED" and not raised.value.abandoned
    assert fake.finished == []  # never reported as a failure
    assert fake.reasons and "interrupted" in fake.reasons[0]


def test_a_second_interrupt_gives_up_at_once_and_leaves_the_run() -> None:
    fake = _InterruptedClient(second_interrupt=True)
    with pytest.raises(RunInterrupted) as raised:
        execute_body(fake, "run-1", _interrupted_body, {}, canceller=fake)  # type: ignore[arg-type]
    assert raised.value.abandoned and raised.value.run_id == "run-1"
    assert fake.finished == []
    fake.cancelled.set()


def test_an_unconfirmed_cancel_is_reported_as_still_cancelling(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runner_module, "CANCEL_CONFIRM_WAIT_S", 0.2)
    fake = _InterruptedClient(confirms=False)
    try:
        with pytest.raises(RunInterrupted) as raised:
            execute_body(fake, "run-1", _interrupted_body, {}, canceller=fake)  # type: ignore[arg-type]
        assert raised.value.state == "CANCELLING"
    finally:
        fake.stopped.set()


def test_resuming_a_hosted_run_follows_it_and_never_shows_a_sealed_result() -> None:
    """A hosted run is resumed by a hosted runner: the caller only follows it; its outcome
    carries the stored result, but never a sealed one's ciphertext as if it were the value."""
    import os
    from types import SimpleNamespace

    from meridian import models as sdk_models
    from meridian.core.sealing import RESULT, KeyRing, seal_text
    from meridian.sdk.runner import resume_flow

    sealed = seal_text(KeyRing({"eu": os.urandom(64)}), "eu", '{"x": 1}', RESULT, "r1", "")
    for stored, expected in (('{"x": 1}', {"x": 1}), (sealed, None)):
        updates: list[object] = []
        client = SimpleNamespace(
            resume_run=lambda run_id, here=False: sdk_models.RunToExecute(
                "r1", "f", "flows.py:f", "{}", "b" * 64, "PENDING", 7, "", hosted=True
            ),
            watch_run=lambda run_id, after=0: iter(["update"]),
            get_run=lambda run_id, stored=stored: SimpleNamespace(
                flow_run_id="r1",
                state="COMPLETED",
                result_json=stored,
                error=None,
                parent_run_id="",
                parent_key="",
            ),
        )
        outcome = resume_flow(client, "r1", on_update=updates.append)  # type: ignore[arg-type]
        assert (outcome.flow_run_id, outcome.state, outcome.result) == ("r1", "COMPLETED", expected)
        assert updates == ["update"]


@pytest.mark.parametrize("how", ["resume", "retry"])
def test_a_subflow_child_is_refused_naming_its_parent(how: str) -> None:
    from types import SimpleNamespace

    from meridian.core.errors import ConflictError
    from meridian.sdk.runner import resume_flow, retry_flow

    touched: list[str] = []
    client = SimpleNamespace(
        get_run=lambda run_id: SimpleNamespace(
            flow_run_id="child-1", parent_run_id="parent-1", parent_key="sub2#1"
        ),
        resume_run=lambda *a, **k: touched.append("resume"),
        retry_run=lambda *a, **k: touched.append("retry"),
    )
    act = resume_flow if how == "resume" else retry_flow
    with pytest.raises(ConflictError) as raised:
        act(client, "child")  # type: ignore[arg-type]
    assert str(raised.value) == (
        f"run child-1 is a subflow of run parent-1; {how} the parent run parent-1 "
        "(its body calls the subflow again)"
    )
    assert touched == []
