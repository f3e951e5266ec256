"""Sealed steps on the real Agent: a fake control plane over loopback mTLS, the real process
provider (and, for the restart, the in-process fake provider that can be re-attached).

Proves that the agent opens sealed inputs with its own key so the step sees plain values, that
the result and the step's own error texts leave the site sealed (no plaintext in any report or
agent file outside the step's work directory), and that a missing key or a ciphertext that
does not belong to the attempt fails it as permanent, naming the key group, without starting
anything.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from agent import Agent, AgentConfig, enroll
from agent.handles import HandleStore, StoredHandle
from agent.journal import JOURNAL_FILE
from agent.sealing import AttemptSeal
from meridian.core import sealing
from meridian.core.sealing import KeyRing
from protos.meridian.v1 import agent_pb2, common_pb2
from providers.base import ExecutionSpec, Handle, Provider
from providers.process import ProcessProvider
from tests.agent.fakecp import JOIN_TOKEN, FakeControlPlane, FakeProvider, Session
from tests.support.deadlines import DEADLINE_S
from tests.support.tls import TestPKI

pytestmark = pytest.mark.timeout(60)

SECRET = "iban-DE89370400440532013000"
STEP_CODE = """
def double(account, amount):
    return {"account": account, "twice": amount * 2}

def refuse(account, amount):
    raise ValueError(f"account {account} is frozen")
"""


class RecordingProcessProvider(ProcessProvider):
    """The real process provider, remembering what it was asked to start."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: dict[str, str] = {}

    async def submit(self, spec: ExecutionSpec) -> Handle:
        self.inputs[spec.attempt_id] = spec.inputs_json
        return await super().submit(spec)


def run_async(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), DEADLINE_S))


@asynccontextmanager
async def agent_with_cp(
    tmp_path: Path, provider: Provider, keys: KeyRing, cp: FakeControlPlane | None = None
) -> AsyncIterator[tuple[FakeControlPlane, Session, asyncio.Task[None]]]:
    owned = cp is None
    if cp is None:
        cp = FakeControlPlane(TestPKI())
        await cp.start()
        ca_file = tmp_path / "ca.pem"
        ca_file.write_bytes(cp.pki.ca_pem)
        await asyncio.to_thread(enroll, cp.enroll_address, ca_file, JOIN_TOKEN, tmp_path / "agent")
    config = AgentConfig(
        control_plane=cp.address,
        data_dir=tmp_path / "agent",
        providers=(provider.type,),
        drain_grace_s=2.0,
        reconnect_max_backoff_s=0.3,
        seal_keys=keys,
    )
    agent = Agent(config, provider_loader=lambda _type, _cfg: provider)
    run_task = asyncio.ensure_future(agent.run())
    try:
        session = await cp.next_session()
        session.welcome()
        yield cp, session, run_task
    finally:
        if cp.latest is not None:
            cp.latest.ack_everything()
        await agent.shutdown(grace=0.5)
        if not run_task.cancelled():
            await run_task
        if owned:
            await cp.stop()


def assign_sealed(
    session: Session,
    attempt_id: str,
    inputs_json: str,
    *,
    function: str = "double",
    step_dir: Path | None = None,
    provider: str = "process",
    step_key: str = "pay#1",
) -> None:
    options = {"env": {"PYTHONPATH": str(step_dir)}} if step_dir else {"run_for": 0.5}
    spec = common_pb2.StepSpec(
        name="pay",
        module="sealed_step",
        function=function,
        provider=provider,
        options_json=json.dumps(options),
    )
    assignment = agent_pb2.Assign(
        attempt_id=attempt_id,
        fencing_token=1,
        flow_run_id="run-1",
        step_run_id=f"sr-{attempt_id}",
        step_key=step_key,
        attempt_number=1,
        spec=spec,
        inputs_json=inputs_json,
    )
    session.send(assign=agent_pb2.AssignBatch(assignments=[assignment]))


async def run_attempt(session: Session, attempt_id: str) -> list[Any]:
    running = await session.next_report()
    assert running.WhichOneof("body") == "running"
    session.decide(attempt_id, 1)
    return [running, *await session.reports_until_finished(attempt_id)]


def sealed_inputs(keys: KeyRing, step_key: str = "pay#1", group: str = "eu-sites") -> str:
    plain = json.dumps({"args": [SECRET], "kwargs": {"amount": 21}})
    return sealing.seal_inputs(keys, group, plain, "run-1", step_key)


def assert_no_plaintext(reports: list[Any], data_dir: Path) -> None:
    for report in reports:
        assert SECRET.encode() not in report.SerializeToString(), report
    # The journal database, its WAL, the handle store: everything but the steps' work dirs.
    for path in data_dir.rglob("*"):
        if path.is_file() and "work" not in path.relative_to(data_dir).parts:
            assert SECRET.encode() not in path.read_bytes(), path


@pytest.fixture
def keys() -> KeyRing:
    return KeyRing({"eu-sites": os.urandom(64)})


@pytest.fixture
def step_dir(tmp_path: Path) -> Path:
    step_dir = tmp_path / "steps"
    step_dir.mkdir()
    (step_dir / "sealed_step.py").write_text(STEP_CODE)
    return step_dir


def test_sealed_inputs_are_opened_at_the_site_and_the_outcome_leaves_it_sealed(
    tmp_path: Path, step_dir: Path, keys: KeyRing
) -> None:
    provider = RecordingProcessProvider()

    async def scenario() -> None:
        async with agent_with_cp(tmp_path, provider, keys) as (_, s, _task):
            assign_sealed(s, "ok-1", sealed_inputs(keys), step_dir=step_dir)
            reports = await run_attempt(s, "ok-1")
            finished = reports[-1].finished
            assert finished.outcome == agent_pb2.ATTEMPT_OUTCOME_SUCCEEDED, finished
            opened = sealing.open_text(
                keys, finished.result_json, sealing.RESULT, "run-1", "pay#1", "eu-sites"
            )
            assert json.loads(opened) == {"account": SECRET, "twice": 42}

            assign_sealed(s, "fail-1", sealed_inputs(keys), function="refuse", step_dir=step_dir)
            failed = await run_attempt(s, "fail-1")
            error = failed[-1].finished.error
            assert (error.error_class, error.type) == ("transient", "builtins.ValueError")
            message = sealing.open_text(
                keys, error.message, sealing.ERROR_MESSAGE, "run-1", "pay#1", "eu-sites"
            )
            assert message == f"account {SECRET} is frozen"
            assert_no_plaintext(reports + failed, tmp_path / "agent")

    run_async(scenario)
    # The provider (the site) got the plain inputs.
    assert json.loads(provider.inputs["ok-1"]) == {"args": [SECRET], "kwargs": {"amount": 21}}


@pytest.mark.parametrize("problem", ["no-key", "other-key", "moved"])
def test_inputs_this_agent_cannot_open_fail_permanent_naming_the_group(
    tmp_path: Path, step_dir: Path, keys: KeyRing, problem: str
) -> None:
    provider = RecordingProcessProvider()
    agent_keys = {
        "no-key": KeyRing(),
        "other-key": KeyRing({"eu-sites": os.urandom(64)}),
        "moved": keys,
    }[problem]
    # "moved": sealed for another step of the run, replayed by someone as this one's inputs.
    inputs = sealed_inputs(keys, step_key="other#1" if problem == "moved" else "pay#1")

    async def scenario() -> None:
        async with agent_with_cp(tmp_path, provider, agent_keys) as (_, s, _task):
            assign_sealed(s, "bad-1", inputs, step_dir=step_dir)
            reports = await run_attempt(s, "bad-1")
            assert [r.WhichOneof("body") for r in reports] == ["running", "finished"]
            finished = reports[-1].finished
            assert finished.outcome == agent_pb2.ATTEMPT_OUTCOME_FAILED
            assert finished.error.error_class == "permanent"  # never retried
            assert finished.error.type == "meridian.core.errors.SealError"
            assert "key group 'eu-sites'" in finished.error.message
            if problem == "no-key":
                assert "this agent has no key" in finished.error.message
            else:
                assert "did not authenticate" in finished.error.message
            assert_no_plaintext(reports, tmp_path / "agent")

    run_async(scenario)
    assert provider.inputs == {}
    assert not (tmp_path / "agent" / "work" / "bad-1").exists()


def test_a_reattached_sealed_attempt_still_reports_its_result_sealed(
    tmp_path: Path, keys: KeyRing
) -> None:
    provider = FakeProvider()

    async def scenario() -> None:
        async with agent_with_cp(tmp_path, provider, keys) as (cp, s, task):
            assign_sealed(s, "a1", sealed_inputs(keys), provider="fake")
            await s.next_report()
            s.decide("a1", 1)
            assert (await s.next_report()).WhichOneof("body") == "handle"
            task.cancel()  # the agent process dies; the step keeps running
            await asyncio.gather(task, return_exceptions=True)
            await s.ended.wait()
            async with agent_with_cp(tmp_path, provider, keys, cp=cp) as (_, s2, _task):
                reports = await s2.reports_until_finished("a1")
                finished = reports[-1].finished
                assert finished.outcome == agent_pb2.ATTEMPT_OUTCOME_SUCCEEDED
                opened = sealing.open_text(
                    keys, finished.result_json, sealing.RESULT, "run-1", "pay#1", "eu-sites"
                )
                assert json.loads(opened) == {"ok": True}

    run_async(scenario)


def test_handle_store_keeps_the_seal_and_upgrades_an_old_journal(tmp_path: Path) -> None:
    db = tmp_path / JOURNAL_FILE
    with sqlite3.connect(db) as conn:  # the table as agents before sealing created it
        conn.execute(
            "CREATE TABLE handles (attempt_id TEXT PRIMARY KEY, fencing_token INTEGER NOT NULL, "
            "provider TEXT NOT NULL, handle_json TEXT NOT NULL)"
        )
        conn.execute("INSERT INTO handles VALUES ('old', 1, 'fake', '{}')")
    store = HandleStore(tmp_path)
    seal = AttemptSeal("eu-sites", "run-1", "pay#1")
    store.save(StoredHandle("new", 2, "fake", "{}", seal.to_json()))
    loaded = {h.attempt_id: h for h in store.load_all()}
    store.close()
    assert AttemptSeal.from_json(loaded["old"].seal_json) is None
    assert AttemptSeal.from_json(loaded["new"].seal_json) == seal
