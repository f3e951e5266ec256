"""A real agent process SIGKILLed while it stores a step's result loses and duplicates nothing.

The agent (``python -m tests.agent.results.storecrash``: the production CLI with the
filesystem store's write wrapped) runs a step that returns 2 MiB and kills itself with SIGKILL
half-way through the put (a torn ``.part`` file, nothing committed) or right after the put
committed (before the finished report is journaled). A fresh agent on the same data dir
re-attaches to the attempt, finds its outcome and result file again and puts them again:
the store then holds exactly one object with the right digest, the attempt finishes once, as
succeeded, and the step's code ran once. The control plane is the fake one over loopback mTLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent import enroll
from agent.results import FilesystemConfig, FilesystemStore, attempt_key, file_digest
from meridian.core.resultref import ResultRef
from protos.meridian.v1 import agent_pb2, common_pb2
from tests.agent.fakecp import JOIN_TOKEN, FakeControlPlane
from tests.agent.results.storecrash import POINTS
from tests.integration.harness import child_env
from tests.support.deadlines import DEADLINE_S
from tests.support.tls import TestPKI

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[3]
SIZE = 2 * 1024 * 1024
STEPS = """
def produce_once(n, log):
    with open(log, "a") as f:
        f.write("ran\\n")
    return "y" * n
"""


def start_agent(tmp_path: Path, cp: FakeControlPlane, crash: str | None) -> subprocess.Popen[bytes]:
    args = [
        "agent",
        "start",
        "--data-dir",
        str(tmp_path / "agent"),
        "--environment",
        "test-env",
        "--control-plane",
        cp.address,
        "--ca-file",
        str(tmp_path / "ca.pem"),
        "--config",
        str(tmp_path / "agent.toml"),
        "--capacity",
        "1",
    ]
    module = ["-m", "tests.agent.results.storecrash", crash] if crash else ["-m", "meridian"]
    log = open(tmp_path / "agent.log", "ab")  # noqa: SIM115 (the child holds it)
    with log:
        return subprocess.Popen(
            [sys.executable, *module, *args],
            stdout=log,
            stderr=log,
            env=child_env(),
            start_new_session=True,  # its own group: the step's workers go with it at the end
            cwd=REPO,
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=DEADLINE_S)


def assign(session: Any, step_dir: Path, run_log: Path) -> None:
    spec = common_pb2.StepSpec(
        name="produce_once",
        module="crash_steps",
        function="produce_once",
        provider="process",
        options_json=json.dumps({"env": {"PYTHONPATH": str(step_dir)}}),
    )
    inputs = {"args": [SIZE, str(run_log)], "kwargs": {}}
    assignment = agent_pb2.Assign(
        attempt_id="p-1",
        fencing_token=1,
        flow_run_id="run-1",
        step_run_id="sr-p-1",
        step_key="produce#1",
        attempt_number=1,
        spec=spec,
        inputs_json=json.dumps(inputs),
    )
    session.send(assign=agent_pb2.AssignBatch(assignments=[assignment]))


@pytest.mark.parametrize("point", POINTS)
def test_sigkill_while_storing_the_result(tmp_path: Path, point: str) -> None:
    root = tmp_path / "results"
    (tmp_path / "agent.toml").write_text(
        f'[result_stores.scratch]\ntype = "filesystem"\nroot = "{root}"\n'
    )
    step_dir = tmp_path / "steps"
    step_dir.mkdir()
    (step_dir / "crash_steps.py").write_text(STEPS)
    run_log = tmp_path / "runs.log"
    agents: list[subprocess.Popen[bytes]] = []

    async def scenario() -> list[Any]:
        cp = FakeControlPlane(TestPKI())
        await cp.start()
        try:
            (tmp_path / "ca.pem").write_bytes(cp.pki.ca_pem)
            data_dir = tmp_path / "agent"
            await asyncio.to_thread(
                enroll, cp.enroll_address, tmp_path / "ca.pem", JOIN_TOKEN, data_dir
            )
            agents.append(start_agent(tmp_path, cp, crash=point))
            first = await cp.next_session()
            first.welcome()
            assign(first, step_dir, run_log)
            running = await first.next_report()
            assert running.WhichOneof("body") == "running"
            first.decide("p-1", 1)
            code = await asyncio.to_thread(agents[0].wait, DEADLINE_S)
            assert code == -signal.SIGKILL, (tmp_path / "agent.log").read_text()
            objects = [p for p in root.rglob("*") if p.is_file() and "runs" in p.parts]
            parts = list((root / ".incoming").glob("*.part"))
            if point == "mid_put":  # torn: a part file, no object
                assert (len(objects), len(parts)) == (0, 1)
            else:  # committed, but the finished report was never journaled
                assert (len(objects), len(parts)) == (1, 0)
            seen = []
            while not first.reports.empty():
                seen.append(first.reports.get_nowait())

            agents.append(start_agent(tmp_path, cp, crash=None))
            second = await cp.next_session()
            held = [h.attempt_id for h in second.hello.held_attempts]
            assert held == ["p-1"], second.hello
            second.welcome()
            second.ack_everything()
            seen += await second.reports_until_finished("p-1")
            return seen
        finally:
            for proc in agents:
                stop(proc)
            await cp.stop()

    reports = asyncio.run(asyncio.wait_for(scenario(), DEADLINE_S * 2))
    finished = [r.finished for r in reports if r.WhichOneof("body") == "finished"]
    assert len(finished) == 1, reports
    assert finished[0].outcome == agent_pb2.ATTEMPT_OUTCOME_SUCCEEDED, finished
    ref = ResultRef.from_json(finished[0].result_ref_json)
    store = FilesystemStore("scratch", FilesystemConfig(root))
    (only,) = list(store.list())  # the torn part of mid_put is never an object
    assert only.key == attempt_key("run-1", "produce#1", "p-1")
    obj = root / only.key
    expected = hashlib.sha256(json.dumps("y" * SIZE).encode()).hexdigest()
    assert ref.sha256 == file_digest(obj) == expected and ref.size == obj.stat().st_size
    assert run_log.read_text() == "ran\n"  # the step ran once; only the put was repeated
