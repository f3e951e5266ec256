"""End to end: the real Agent, a fake control plane over loopback mTLS, the real process provider.

Proves that a step gets its secret in its environment, that the value never reaches the
journal or the control plane (the step prints it; the shipped line shows ``***``; its error is
scrubbed too), and that an unresolvable secret fails the attempt as permanent without starting
anything.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from agent import Agent, AgentConfig, enroll
from protos.meridian.v1 import agent_pb2, common_pb2
from providers.base import ExecutionSpec, Handle
from providers.process import ProcessProvider
from tests.agent.fakecp import JOIN_TOKEN, FakeControlPlane, Session
from tests.support.deadlines import DEADLINE_S
from tests.support.tls import TestPKI

pytestmark = pytest.mark.timeout(60)

SECRET = "file-secret-Zq9x!Kv"
STEP_CODE = """
import base64, hashlib, os

def show():
    pw = os.environ["DB_PASSWORD"]
    print(f"password={pw}", flush=True)
    print("b64=" + base64.b64encode(pw.encode()).decode(), flush=True)
    return {"sha256": hashlib.sha256(pw.encode()).hexdigest()}

def fail():
    raise RuntimeError("login refused for " + os.environ["DB_PASSWORD"])
"""


class RecordingProcessProvider(ProcessProvider):
    """The real process provider, remembering which attempts it was asked to start."""

    def __init__(self) -> None:
        super().__init__()
        self.submitted: list[str] = []

    async def submit(self, spec: ExecutionSpec) -> Handle:
        self.submitted.append(spec.attempt_id)
        return await super().submit(spec)


def run_async(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), DEADLINE_S))


@asynccontextmanager
async def agent_with_cp(
    tmp_path: Path, provider: RecordingProcessProvider
) -> AsyncIterator[tuple[FakeControlPlane, Session]]:
    cp = FakeControlPlane(TestPKI())
    await cp.start()
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(cp.pki.ca_pem)
    await asyncio.to_thread(enroll, cp.enroll_address, ca_file, JOIN_TOKEN, tmp_path / "agent")
    config = AgentConfig(
        control_plane=cp.address,
        data_dir=tmp_path / "agent",
        providers=("process",),
        drain_grace_s=2.0,
        reconnect_max_backoff_s=0.3,
        secrets={"file": {"max_bytes": 1024}},
    )
    agent = Agent(config, provider_loader=lambda _type, _cfg: provider)
    run_task = asyncio.ensure_future(agent.run())
    try:
        session = await cp.next_session()
        session.welcome()
        yield cp, session
    finally:
        if cp.latest is not None:
            cp.latest.ack_everything()
        await agent.shutdown(grace=0.5)
        await run_task
        await cp.stop()


def assign(
    session: Session, step_dir: Path, attempt_id: str, function: str, secrets: dict[str, str]
) -> None:
    """Assign one attempt of ``secret_step.<function>``, importable through PYTHONPATH."""
    spec = common_pb2.StepSpec(
        name="step",
        module="secret_step",
        function=function,
        provider="process",
        options_json=json.dumps({"env": {"PYTHONPATH": str(step_dir)}}),
        secrets=secrets,
    )
    session.send(
        assign=agent_pb2.AssignBatch(
            assignments=[
                agent_pb2.Assign(
                    attempt_id=attempt_id,
                    fencing_token=1,
                    flow_run_id="run-1",
                    step_run_id=f"sr-{attempt_id}",
                    step_key="step#1",
                    attempt_number=1,
                    spec=spec,
                    inputs_json='{"args": [], "kwargs": {}}',
                )
            ]
        )
    )


async def run_attempt(session: Session, attempt_id: str) -> list[Any]:
    running = await session.next_report()
    assert running.WhichOneof("body") == "running"
    session.decide(attempt_id, 1)
    return [running, *await session.reports_until_finished(attempt_id)]


def leaked_forms() -> list[bytes]:
    raw = SECRET.encode()
    return [raw, base64.b64encode(raw)]


def assert_not_leaked(reports: list[Any], data_dir: Path) -> None:
    for report in reports:
        wire = report.SerializeToString()
        assert not any(form in wire for form in leaked_forms()), report
    # Raw bytes of the journal database, its WAL and every other agent file except the
    # step's own work directories: even a journaled-then-acked row would leave traces here.
    for path in data_dir.rglob("*"):
        if path.is_file() and "work" not in path.relative_to(data_dir).parts:
            data = path.read_bytes()
            assert not any(form in data for form in leaked_forms()), path


@pytest.fixture
def step_dir(tmp_path: Path) -> Path:
    """The step module, and the secret file next to it (``db-password``)."""
    step_dir = tmp_path / "steps"
    step_dir.mkdir()
    (step_dir / "secret_step.py").write_text(STEP_CODE)
    (step_dir / "db-password").write_text(SECRET + "\n")
    return step_dir


def test_step_gets_secret_and_value_is_redacted_everywhere(tmp_path: Path, step_dir: Path) -> None:
    provider = RecordingProcessProvider()

    async def scenario() -> None:
        async with agent_with_cp(tmp_path, provider) as (_, s):
            assign(s, step_dir, "ok-1", "show", {"DB_PASSWORD": f"file:{step_dir / 'db-password'}"})
            reports = await run_attempt(s, "ok-1")
            finished = reports[-1].finished
            assert finished.outcome == agent_pb2.ATTEMPT_OUTCOME_SUCCEEDED, finished
            # The step saw the real value (its digest came back), the logs only a mask.
            digest = hashlib.sha256(SECRET.encode()).hexdigest()
            assert json.loads(finished.result_json) == {"sha256": digest}
            lines = [
                ln.text for r in reports if r.WhichOneof("body") == "logs" for ln in r.logs.lines
            ]
            assert "password=***" in lines and "b64=***" in lines, lines

            assign(
                s, step_dir, "fail-1", "fail", {"DB_PASSWORD": f"file:{step_dir / 'db-password'}"}
            )
            failed = await run_attempt(s, "fail-1")
            error = failed[-1].finished.error
            assert failed[-1].finished.outcome == agent_pb2.ATTEMPT_OUTCOME_FAILED
            assert "login refused for ***" in error.message
            assert "login refused for ***" in error.traceback
            assert_not_leaked(reports + failed, tmp_path / "agent")
        # Positive control: the value really was printed, into the step's site-local output.
        work = tmp_path / "agent" / "work" / "ok-1"
        assert any(SECRET.encode() in p.read_bytes() for p in work.rglob("*") if p.is_file())

    run_async(scenario)
    assert provider.submitted == ["ok-1", "fail-1"]


def test_missing_secret_fails_permanent_without_starting_the_provider(
    tmp_path: Path, step_dir: Path
) -> None:
    provider = RecordingProcessProvider()

    async def scenario() -> None:
        async with agent_with_cp(tmp_path, provider) as (_, s):
            secrets = {
                "DB_PASSWORD": f"file:{step_dir / 'db-password'}",
                "API_KEY": "env:NO_SUCH_VAR_FOR_TEST",
            }
            assign(s, step_dir, "miss-1", "show", secrets)
            reports = await run_attempt(s, "miss-1")
            assert [r.WhichOneof("body") for r in reports] == ["running", "finished"]
            finished = reports[-1].finished
            assert finished.outcome == agent_pb2.ATTEMPT_OUTCOME_FAILED
            assert finished.error.error_class == "permanent"
            assert finished.error.type == "meridian.SecretNotFound"
            assert "API_KEY" in finished.error.message
            assert "env:NO_SUCH_VAR_FOR_TEST" in finished.error.message
            assert_not_leaked(reports, tmp_path / "agent")

    run_async(scenario)
    assert provider.submitted == []
    assert not (tmp_path / "agent" / "work" / "miss-1").exists()
