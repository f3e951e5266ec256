"""meridian.stepworker, driven over its pipe protocol the way the process provider drives it."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from meridian import stepworker
from providers.process import state
from tests.support.deadlines import DEADLINE_S

STEPS = """
import os
import sys


def loaded():
    prefixes = ("meridian", "grpc", "control_plane", "agent", "providers", "sqlalchemy")
    return sorted(m for m in sys.modules if m.split(".")[0] in prefixes)


def hello(name):
    print(f"hello {name}")
    return os.environ.get("GREETING", "") + name
"""


class Worker:
    """A real worker process and our end of its pipes."""

    def __init__(self, cwd: Path) -> None:
        root = str(Path(stepworker.__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": root}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "meridian.stepworker", "--grace", "1"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )

    def send_raw(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def send(self, message: dict[str, Any]) -> None:
        body = json.dumps(message).encode()
        self.send_raw(struct.pack(">I", len(body)) + body)

    def receive(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        (size,) = struct.unpack(">I", self.proc.stdout.read(4))
        value: dict[str, Any] = json.loads(self.proc.stdout.read(size))
        return value

    def finish(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.proc.wait(timeout=DEADLINE_S)


@pytest.fixture
def worker(tmp_path: Path) -> Any:
    started = Worker(tmp_path)
    assert started.receive() == {"op": "ready", "pid": started.proc.pid}
    yield started
    if started.proc.poll() is None:
        started.proc.kill()
        started.proc.wait()


def step_dir(tmp_path: Path, bundle: Path, name: str, function: str, *args: Any) -> Path:
    work_dir = tmp_path / name
    work_dir.mkdir()
    spec = {
        "step_key": f"{function}#1",
        "module": "worker_steps",
        "function": function,
        "inputs_json": json.dumps({"args": list(args), "kwargs": {}}),
        "bundle_dir": str(bundle),
    }
    (work_dir / "spec.json").write_text(json.dumps(spec))
    return work_dir


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    directory = tmp_path / "bundle"
    directory.mkdir()
    (directory / "worker_steps.py").write_text(STEPS)
    return directory


def run(worker: Worker, work_dir: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    worker.send({"op": "run", "work_dir": str(work_dir), "cwd": str(work_dir), "env": env or {}})
    reply = worker.receive()
    assert reply["op"] == "done" and reply["work_dir"] == str(work_dir)
    outcome: dict[str, Any] = json.loads((work_dir / "outcome.json").read_text())
    return outcome


def test_both_ends_of_the_protocol_agree() -> None:
    # The framing itself is one module (meridian.core.framing, tests/meridian/core); the log
    # file names are the provider's.
    assert (stepworker.STDOUT_LOG, stepworker.STDERR_LOG) == (state.STDOUT_LOG, state.STDERR_LOG)


def test_runs_steps_and_exits_when_its_input_ends(
    worker: Worker, bundle: Path, tmp_path: Path
) -> None:
    first = run(worker, step_dir(tmp_path, bundle, "one", "hello", "ada"), {"GREETING": "hi "})
    assert first == {"state": "succeeded", "result_json": '"hi ada"'}
    second_dir = step_dir(tmp_path, bundle, "two", "hello", "bob")
    assert json.loads(run(worker, second_dir)["result_json"]) == "bob"
    assert (second_dir / "stdout.log").read_text() == "hello bob\n"
    assert worker.finish() == 0


def test_the_warm_worker_loads_only_the_shared_core(
    worker: Worker, bundle: Path, tmp_path: Path
) -> None:
    modules = json.loads(run(worker, step_dir(tmp_path, bundle, "m", "loaded"))["result_json"])
    foreign = [m for m in modules if not m.startswith("meridian.core")]
    # The worker itself runs as ``__main__``; it shares ``run_step`` with the one-step executor.
    assert foreign == ["meridian", "meridian.stepexec"], foreign


def test_refuses_a_step_of_another_bundle(worker: Worker, bundle: Path, tmp_path: Path) -> None:
    assert run(worker, step_dir(tmp_path, bundle, "one", "hello", "x"))["state"] == "succeeded"
    other = tmp_path / "other-bundle"
    other.mkdir()
    (other / "worker_steps.py").write_text(STEPS)
    outcome = run(worker, step_dir(tmp_path, other, "two", "hello", "y"))
    assert outcome["state"] == "failed"
    assert outcome["error"]["error_class"] == "infrastructure"
    assert "other-bundle" in outcome["error"]["message"]


def test_unreadable_spec_fails_the_step_not_the_worker(worker: Worker, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    outcome = run(worker, empty)
    assert outcome["state"] == "failed" and "spec" in outcome["error"]["message"]
    assert worker.proc.poll() is None


@pytest.mark.parametrize(
    "data",
    [
        struct.pack(">I", stepworker.MAX_MESSAGE_BYTES + 1),
        struct.pack(">I", 2) + b"[]",
        struct.pack(">I", 9) + b'{"op": 1}',
        struct.pack(">I", 40) + b'{"op": "run", "work_dir": "relative", ',
    ],
    ids=["oversized", "not-an-object", "unknown-op", "truncated"],
)
def test_malformed_messages_stop_the_worker(worker: Worker, data: bytes) -> None:
    worker.send_raw(data)
    assert worker.finish() == 2


CONTEXT_STEPS = """
import logging
import os

import meridian


def where(quiet):
    log = meridian.get_logger("w")
    log.debug("debug record")
    log.warning("warning record")
    if quiet:  # a step that silences the logger must not silence the next one
        log.setLevel(logging.CRITICAL)
        meridian.get_logger().setLevel(logging.CRITICAL)
    try:
        ctx = meridian.context()
    except meridian.NoRunContext:
        return None
    return [ctx.run_id, ctx.step_key, ctx.attempt_number, os.environ.get("MERIDIAN_STEP_KEY")]
"""


def test_each_step_sees_its_own_context_and_nothing_of_the_last_one(
    worker: Worker, tmp_path: Path
) -> None:
    code = tmp_path / "ctx_bundle"
    code.mkdir()
    (code / "worker_steps.py").write_text(CONTEXT_STEPS)

    def step(name: str, context: dict[str, Any] | None) -> Path:
        work_dir = step_dir(tmp_path, code, name, "where", True)
        if context is not None:
            spec = json.loads((work_dir / "spec.json").read_text())
            (work_dir / "spec.json").write_text(json.dumps({**spec, "context": context}))
        return work_dir

    first = step("a", {"run_id": "run-a", "step_key": "where#1", "attempt_number": 1})
    assert json.loads(run(worker, first)["result_json"]) == ["run-a", "where#1", 1, None]
    # No context in the spec and none in the environment: context() raises in the step.
    second = step("b", None)
    assert json.loads(run(worker, second)["result_json"]) is None
    # From the MERIDIAN_* variables when the spec has none (providers that do not write it).
    third = step("c", None)
    env = {"MERIDIAN_FLOW_RUN_ID": "run-c", "MERIDIAN_STEP_KEY": "where#7"}
    assert json.loads(run(worker, third, env)["result_json"]) == ["run-c", "where#7", None,
                                                                  "where#7"]  # fmt: skip
    fourth = step("d", {"run_id": "run-d", "step_key": "where#2", "attempt_number": 3})
    assert json.loads(run(worker, fourth)["result_json"]) == ["run-d", "where#2", 3, None]
    for work_dir in (first, third, fourth):
        # Every step logged at every level although the one before it silenced the loggers.
        lines = (work_dir / "stderr.log").read_text().splitlines()
        records = [json.loads(line.removeprefix("::meridian-log::")) for line in lines]
        assert [(r["level"], r["message"]) for r in records] == [
            ("debug", "debug record"),
            ("warning", "warning record"),
        ]
    # Without a context the logger is an ordinary one: logging's last resort prints warnings.
    assert (second / "stderr.log").read_text() == "warning record\n"
