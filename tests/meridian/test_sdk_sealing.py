"""Sealing in the SDK: ``@step(seal=...)``/``@flow(seal=...)``, sealed submissions, opening
what comes back, and what the flow runner reports for the run itself.

The agent's side is played by ``agent_outcome`` with the real ``meridian.core.sealing`` functions
the agent uses; the flow runner tests use the TLS fake control plane of ``test_client``.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from meridian import StepFailed, ValidationError, flow, models, step
from meridian.client import ControlClient
from meridian.core import sealing
from meridian.core.errors import SealError
from meridian.core.sealing import RESULT, KeyRing
from meridian.sdk.context import FlowContext, activate
from meridian.sdk.runner import error_info, run_flow
from tests.meridian.test_client import FakeServer
from tests.meridian.test_sdk_step import RecordingSubmitter

SECRET = "acct-DE89-3704-0044"


@step(seal="eu-sites")
def scrub(account: str, limit: int = 1) -> dict:
    return {"account": account, "limit": limit}


@step
def plain(value: str) -> str:
    return value


@step(seal=False)
def never_sealed(value: str) -> str:
    return value


@step(seal="us-sites")
def in_us(value: str) -> str:
    return value


@pytest.fixture
def ring() -> KeyRing:
    return KeyRing({"eu-sites": os.urandom(64), "us-sites": os.urandom(64)})


def agent_outcome(
    ring: KeyRing, run_id: str, sub: models.StepSubmission, error: str | None = None
) -> models.StepOutcome:
    """What an agent holding the key sends back for ``sub``: result (or error) sealed."""
    group = sealing.inputs_key_group(sub.inputs_json)
    assert group is not None
    inputs = json.loads(sealing.open_inputs(ring, sub.inputs_json, run_id, sub.key))
    if error is None:
        result = json.dumps(inputs)
        sealed = sealing.seal_text(ring, group, result, RESULT, run_id, sub.key)
        return models.StepOutcome("sr", sub.key, "COMPLETED", result_json=sealed)
    message, tb = sealing.seal_error_texts(
        ring, group, error, f"Traceback: {error}", run_id, sub.key
    )
    info = models.ErrorInfo("permanent", "builtins.ValueError", message, tb)
    return models.StepOutcome("sr", sub.key, "FAILED", error=info)


def test_a_sealed_step_submits_ciphertext_that_only_the_key_opens(ring: KeyRing) -> None:
    submitter = RecordingSubmitter()
    with activate(FlowContext("run-1", submitter, keys=ring)):
        scrub.submit(SECRET, limit=3)
    (sub,) = submitter.calls[0]
    assert SECRET not in sub.inputs_json
    assert sealing.inputs_key_group(sub.inputs_json) == "eu-sites"
    opened = sealing.open_inputs(ring, sub.inputs_json, "run-1", "scrub#1")
    assert json.loads(opened) == {"args": [SECRET], "kwargs": {"limit": 3}}

    # The body replayed for a resume submits the very same text: the inputs digest holds.
    again = RecordingSubmitter()
    with activate(FlowContext("run-1", again, keys=ring)):
        scrub.submit(SECRET, limit=3)
    assert again.calls[0][0].inputs_json == sub.inputs_json


def test_flow_default_step_override_and_opt_out(ring: KeyRing) -> None:
    submitter = RecordingSubmitter()
    with activate(FlowContext("run-1", submitter, keys=ring, seal="eu-sites")):
        plain.submit("a")
        never_sealed.submit("b")
        in_us.submit("c")
        plain.with_options(seal="us-sites").submit("d")
    groups = [sealing.inputs_key_group(s.inputs_json) for call in submitter.calls for s in call]
    assert groups == ["eu-sites", None, "us-sites", "us-sites"]


def test_a_step_whose_key_the_runner_lacks_fails_at_submission(ring: KeyRing) -> None:
    submitter = RecordingSubmitter()
    context = FlowContext("run-1", submitter, keys=KeyRing({"us-sites": os.urandom(64)}))
    with activate(context), pytest.raises(SealError) as info:
        scrub.submit(SECRET)
    message = str(info.value)
    assert "step 'scrub'" in message and "key group 'eu-sites'" in message
    assert "this flow runner has no key" in message and "MERIDIAN_SEAL_KEYS" in message
    assert submitter.calls == []
    assert context.next_call_number("scrub") == 1  # the failed call took no key number


def test_the_runner_reads_its_keys_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "eu.key"
    sealing.generate_key_file(path)
    monkeypatch.setenv(sealing.ENV_KEYS, f"eu-sites=file:{path}")
    submitter = RecordingSubmitter()
    with activate(FlowContext("run-1", submitter)):
        scrub.submit(SECRET)
    keys = KeyRing.from_references({"eu-sites": f"file:{path}"})
    sub = submitter.calls[0][0]
    assert SECRET in sealing.open_inputs(keys, sub.inputs_json, "run-1", "scrub#1")


def test_a_sealed_result_is_opened_for_the_flow_body(ring: KeyRing) -> None:
    submitter = RecordingSubmitter()
    context = FlowContext("run-1", submitter, keys=ring)
    with activate(context):
        future = scrub.submit(SECRET)
    context.resolve(agent_outcome(ring, "run-1", submitter.calls[0][0]))
    assert future.result(0) == {"args": [SECRET], "kwargs": {}}


def test_an_outcome_arriving_before_its_submission_is_opened_too(ring: KeyRing) -> None:
    submitter = RecordingSubmitter()
    with activate(FlowContext("run-1", submitter, keys=ring)):
        scrub.submit(SECRET)
    early = agent_outcome(ring, "run-1", submitter.calls[0][0])
    replay = FlowContext("run-1", RecordingSubmitter(), keys=ring)
    replay.resolve(early)  # a resumed run: the stored outcome streams in first
    with activate(replay):
        assert scrub(SECRET) == {"args": [SECRET], "kwargs": {}}


@pytest.mark.parametrize("swap", ["unsealed", "other-step"])
def test_a_result_not_sealed_for_this_step_is_refused(ring: KeyRing, swap: str) -> None:
    submitter = RecordingSubmitter()
    context = FlowContext("run-1", submitter, keys=ring)
    with activate(context):
        future = scrub.submit(SECRET)
    if swap == "unsealed":
        outcome = models.StepOutcome("sr", "scrub#1", "COMPLETED", result_json='{"forged": 1}')
    else:
        other = sealing.seal_text(ring, "eu-sites", '"x"', RESULT, "run-1", "scrub#2")
        outcome = models.StepOutcome("sr", "scrub#1", "COMPLETED", result_json=other)
    context.resolve(outcome)
    with pytest.raises(StepFailed) as info:
        future.result(0)
    assert info.value.error_type == "meridian.core.errors.SealError"
    assert "eu-sites" in info.value.remote_message


def test_a_sealed_step_error_is_opened_but_not_reported_in_plaintext(ring: KeyRing) -> None:
    submitter = RecordingSubmitter()
    context = FlowContext("run-1", submitter, keys=ring)
    with activate(context):
        future = scrub.submit(SECRET)
    context.resolve(agent_outcome(ring, "run-1", submitter.calls[0][0], error=f"bad {SECRET}"))
    with pytest.raises(StepFailed) as info:
        future.result(0)
    failure = info.value
    assert failure.remote_message == f"bad {SECRET}" and failure.sealed_with == "eu-sites"
    assert SECRET in failure.remote_traceback

    shown = error_info(failure)  # what the runner prints locally
    assert SECRET in shown.message and SECRET in shown.traceback
    try:  # and wrapped by the flow body, as flows often do
        raise RuntimeError(f"giving up: {failure}") from failure
    except RuntimeError as wrapped:
        for exc in (failure, wrapped):
            stored = error_info(exc, shared=True)  # what FinishRun sends
            assert SECRET not in stored.message and SECRET not in stored.traceback
            assert "[sealed: eu-sites]" in stored.message + stored.traceback
            assert stored.type == exc_type(exc)


def exc_type(exc: BaseException) -> str:
    return f"{type(exc).__module__}.{type(exc).__qualname__}"


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [({"seal": "eu sites"}, "must be 1-64 letters"), ({"seal": 3}, "key group 3")],
)
def test_bad_seal_options_are_refused_at_decoration(kwargs: dict, needle: str) -> None:
    with pytest.raises(ValidationError, match=needle) as info:

        @step(**kwargs)
        def bad() -> None: ...

    assert "step 'bad'" in str(info.value)
    with pytest.raises(ValidationError, match="flow 'f'"):
        flow(name="f", seal=False)(lambda: None)  # type: ignore[arg-type]


# ---- the flow runner: a sealed flow's own result and error ------------------------------------

FLOWS = f"""
from meridian import flow

@flow(seal="eu-sites")
def sealed_total() -> dict:
    return {{"owner": "{SECRET}"}}

@flow(seal="eu-sites")
def sealed_failure() -> None:
    raise ValueError("cannot pay {SECRET}")

@flow
def open_total() -> str:
    return "plain"
"""


@pytest.fixture
def keyed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> KeyRing:
    path = tmp_path / "eu.key"
    sealing.generate_key_file(path)
    monkeypatch.setenv(sealing.ENV_KEYS, f"eu-sites=file:{path}")
    return KeyRing.from_env()


@pytest.fixture
def flows_file(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    path = tmp_path / "project" / f"sealed_flows_{request.node.name.replace('-', '_')}.py"
    path.parent.mkdir()
    path.write_text(textwrap.dedent(FLOWS))
    return path


def test_a_sealed_flow_reports_its_result_sealed(
    client: ControlClient, fake_server: FakeServer, flows_file: Path, keyed: KeyRing
) -> None:
    outcome = run_flow(client, f"{flows_file}:sealed_total", {})
    assert outcome.state == "COMPLETED" and outcome.result == {"owner": SECRET}
    recorded = fake_server.fake.finished[outcome.flow_run_id]
    assert SECRET not in recorded.result_json
    opened = sealing.open_text(
        keyed, recorded.result_json, RESULT, outcome.flow_run_id, sealing.FLOW, "eu-sites"
    )
    assert json.loads(opened) == {"owner": SECRET}


def test_a_sealed_flow_reports_its_error_texts_sealed(
    client: ControlClient, fake_server: FakeServer, flows_file: Path, keyed: KeyRing
) -> None:
    outcome = run_flow(client, f"{flows_file}:sealed_failure", {})
    assert outcome.state == "FAILED"
    assert outcome.error is not None and SECRET in outcome.error.message  # shown locally
    recorded = fake_server.fake.finished[outcome.flow_run_id].error
    assert recorded.type == "builtins.ValueError" and recorded.error_class == "permanent"
    assert SECRET not in recorded.message and SECRET not in recorded.traceback
    opened = sealing.open_text(
        keyed,
        recorded.message,
        sealing.ERROR_MESSAGE,
        outcome.flow_run_id,
        sealing.FLOW,
        "eu-sites",
    )
    assert opened == f"cannot pay {SECRET}"


def test_a_sealed_flow_without_its_key_fails_before_a_run_exists(
    client: ControlClient,
    fake_server: FakeServer,
    flows_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(sealing.ENV_KEYS, raising=False)
    with pytest.raises(SealError, match="this flow runner has no key for key group 'eu-sites'"):
        run_flow(client, f"{flows_file}:sealed_total", {})
    assert fake_server.fake.runs == {}
    # Flows that seal nothing never need a key.
    assert run_flow(client, f"{flows_file}:open_total", {}).result == "plain"
