"""meridian.stepexec, run as a real subprocess the way providers run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from meridian import stepexec
from providers.shared import outcome as _outcome
from providers.shared.outcome import parse_result_marker, read_outcome

REPO_ROOT = Path(__file__).resolve().parents[2]

STEPS = """\
import asyncio
from meridian.core.errors import Permanent


class Marker:
    __meridian_step__ = True

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *a, **k):
        raise AssertionError("stepexec must call .fn, not the wrapper")


def _double(x):
    return x * 2


double = Marker(_double)


class Ns:
    class Inner:
        @staticmethod
        def greet(name, punct="!"):
            return f"hello {name}{punct}"


async def coro(x):
    await asyncio.sleep(0)
    return [x, x]


def boom():
    raise KeyError("missing thing")


def context_only():
    try:
        raise Permanent("inner")
    except Permanent:
        raise RuntimeError("handled badly")  # __context__ only: not a "raise from"


def from_permanent():
    raise ValueError("bad config") from Permanent("do not retry")


def huge_error():
    raise ValueError("m" * 20000)


def deep(n):
    if n == 0:
        raise RuntimeError("bottom " + "t" * 200)
    return deep(n - 1)


def unserializable():
    return {1, 2}


def nan():
    return float("nan")


def exits():
    raise SystemExit(3)


not_callable = 42
"""


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    root = tmp_path / "bundle"
    root.mkdir()
    (root / "steps_mod.py").write_text(STEPS)
    return root


def run_step(
    tmp_path: Path,
    bundle: Path,
    function: str,
    args: list[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    *,
    module: str = "steps_mod",
    inputs_json: str | None = None,
    extra: tuple[str, ...] = (),
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    inputs = inputs_json or json.dumps({"args": args or [], "kwargs": kwargs or {}})
    spec = {
        "module": module,
        "function": function,
        "inputs_json": inputs,
        "bundle_dir": str(bundle),
        "step_key": f"{function}#1",
    }
    (work / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "meridian.stepexec", "--work-dir", str(work), *extra],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
    )
    return proc, json.loads((work / "outcome.json").read_text())


def test_success_unwraps_step_objects(tmp_path: Path, bundle: Path) -> None:
    proc, outcome = run_step(tmp_path, bundle, "double", [21])
    assert proc.returncode == 0, proc.stderr
    assert outcome == {"state": "succeeded", "result_json": "42"}


def test_dotted_qualname_and_kwargs(tmp_path: Path, bundle: Path) -> None:
    _, outcome = run_step(tmp_path, bundle, "Ns.Inner.greet", ["ann"], {"punct": "?"})
    assert json.loads(outcome["result_json"]) == "hello ann?"


def test_async_step(tmp_path: Path, bundle: Path) -> None:
    _, outcome = run_step(tmp_path, bundle, "coro", ["x"])
    assert json.loads(outcome["result_json"]) == ["x", "x"]


def test_exception_is_transient_with_qualified_types(tmp_path: Path, bundle: Path) -> None:
    proc, outcome = run_step(tmp_path, bundle, "boom")
    assert proc.returncode == 1
    error = outcome["error"]
    assert outcome["state"] == "failed"
    assert error["error_class"] == "transient"
    assert error["type"] == "builtins.KeyError"
    assert error["type_mro"] == [
        "builtins.KeyError",
        "builtins.LookupError",
        "builtins.Exception",
        "builtins.BaseException",
    ]
    assert "missing thing" in error["message"]
    assert 'raise KeyError("missing thing")' in error["traceback"]


def test_implicit_context_is_not_permanent(tmp_path: Path, bundle: Path) -> None:
    _, outcome = run_step(tmp_path, bundle, "context_only")
    assert outcome["error"]["error_class"] == "transient"


def test_raised_from_permanent_is_permanent(tmp_path: Path, bundle: Path) -> None:
    _, outcome = run_step(tmp_path, bundle, "from_permanent")
    assert outcome["error"]["error_class"] == "permanent"
    assert outcome["error"]["type"] == "builtins.ValueError"


def test_system_exit_in_step_is_a_failure(tmp_path: Path, bundle: Path) -> None:
    proc, outcome = run_step(tmp_path, bundle, "exits")
    assert proc.returncode == 1
    assert outcome["error"]["type"] == "builtins.SystemExit"


@pytest.mark.parametrize(
    ("module", "function", "needle", "type_"),
    [
        ("no_such_module", "f", "no_such_module", "builtins.ModuleNotFoundError"),
        ("steps_mod", "missing_fn", "missing_fn", "builtins.AttributeError"),
        ("steps_mod", "Ns.Nope.greet", "Nope", "builtins.AttributeError"),
        ("steps_mod", "not_callable", "not callable", "builtins.TypeError"),
    ],
)
def test_unresolvable_step_is_permanent(
    tmp_path: Path, bundle: Path, module: str, function: str, needle: str, type_: str
) -> None:
    proc, outcome = run_step(tmp_path, bundle, function, module=module)
    assert proc.returncode == 1
    error = outcome["error"]
    assert error["error_class"] == "permanent"
    assert error["type"] == type_
    assert needle in error["message"] and module in error["message"]


@pytest.mark.parametrize(
    "inputs",
    [
        "not json",
        "[1, 2]",
        '{"args": {}, "kwargs": {}}',
        # Sealed inputs reach a step only if the agent failed to open them: never run with [].
        '{"args": [], "kwargs": {}, "sealed": {"v": 1, "key": "eu", "ct": "AAAA"}}',
    ],
)
def test_undecodable_inputs_are_permanent(tmp_path: Path, bundle: Path, inputs: str) -> None:
    _, outcome = run_step(tmp_path, bundle, "double", inputs_json=inputs)
    assert outcome["error"]["error_class"] == "permanent"
    assert "cannot decode inputs" in outcome["error"]["message"]


@pytest.mark.parametrize(("function", "type_name"), [("unserializable", "set"), ("nan", "float")])
def test_unserializable_result_is_permanent_type_error(
    tmp_path: Path, bundle: Path, function: str, type_name: str
) -> None:
    _, outcome = run_step(tmp_path, bundle, function)
    error = outcome["error"]
    assert (error["error_class"], error["type"]) == ("permanent", "builtins.TypeError")
    assert f"{function}#1" in error["message"] and f"'{type_name}'" in error["message"]


def test_message_and_traceback_are_bounded(tmp_path: Path, bundle: Path) -> None:
    _, outcome = run_step(tmp_path, bundle, "huge_error")
    assert len(outcome["error"]["message"].encode()) <= stepexec.MAX_MESSAGE_BYTES
    assert outcome["error"]["message"].startswith("mmm")
    _, outcome = run_step(tmp_path, bundle, "deep", [300])
    tb = outcome["error"]["traceback"]
    assert len(tb.encode()) <= stepexec.MAX_TRACEBACK_BYTES
    assert tb.rstrip().endswith("t" * 200)  # the tail (where the error is) is kept


def test_result_marker_line(tmp_path: Path, bundle: Path) -> None:
    proc, outcome = run_step(tmp_path, bundle, "double", [2], extra=("--result-marker",))
    marker_lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(stepexec.RESULT_MARKER)]
    assert len(marker_lines) == 1
    assert json.loads(marker_lines[0][len(stepexec.RESULT_MARKER) :]) == outcome
    parsed = parse_result_marker(proc.stdout)
    assert parsed is not None and parsed.result_json == "4"


def test_reader_understands_writer(tmp_path: Path, bundle: Path) -> None:
    assert (_outcome.SPEC_FILE, _outcome.OUTCOME_FILE, _outcome.RESULT_MARKER) == (
        stepexec.SPEC_FILE,
        stepexec.OUTCOME_FILE,
        stepexec.RESULT_MARKER,
    )
    run_step(tmp_path, bundle, "from_permanent")
    outcome = read_outcome(tmp_path / "work")
    assert outcome is not None and outcome.error is not None
    assert outcome.state == "failed" and outcome.error.error_class == "permanent"
    assert outcome.error.type_mro[0] == "builtins.ValueError"
    assert read_outcome(tmp_path / "elsewhere") is None
    (tmp_path / "work" / "outcome.json").write_text("{torn")
    torn = read_outcome(tmp_path / "work")
    assert torn is not None and torn.error is not None
    assert torn.error.error_class == "infrastructure"


def test_unreadable_spec_exits_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "meridian.stepexec", "--work-dir", str(tmp_path / "none")],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode == 2
    assert "cannot read" in proc.stderr


CONTEXT_STEP = """
import meridian


def fields():
    ctx = meridian.context()
    meridian.get_logger().info("in %s", ctx.step_key)
    return [ctx.run_id, ctx.step_key, ctx.attempt_id, ctx.attempt_number, ctx.environment]
"""


def run_with_context(tmp_path: Path, context: object) -> tuple[str, dict[str, Any]]:
    code = tmp_path / "ctx_code"
    code.mkdir()
    (code / "ctx_steps.py").write_text(CONTEXT_STEP)
    work = tmp_path / "ctx_work"
    work.mkdir()
    spec = {"module": "ctx_steps", "function": "fields", "bundle_dir": str(code),
            "step_key": "fields#1", "context": context}  # fmt: skip
    (work / "spec.json").write_text(json.dumps(spec))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MERIDIAN_")}
    proc = subprocess.run(
        [sys.executable, "-m", "meridian.stepexec", "--work-dir", str(work)],
        env={**env, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=20,
    )
    return proc.stderr, json.loads((work / "outcome.json").read_text())


def test_the_step_sees_the_context_of_its_spec_and_logs_at_a_level(tmp_path: Path) -> None:
    context = {"run_id": "run-1", "step_key": "fields#1", "attempt_id": "att-2",
               "attempt_number": 2, "environment": "onprem"}  # fmt: skip
    stderr, outcome = run_with_context(tmp_path, context)
    assert json.loads(outcome["result_json"]) == ["run-1", "fields#1", "att-2", 2, "onprem"]
    record = json.loads(stderr.removeprefix("::meridian-log::"))
    assert record == {"level": "info", "logger": "meridian.run", "message": "in fields#1"}


def test_a_malformed_context_fails_the_step_permanently(tmp_path: Path) -> None:
    _, outcome = run_with_context(tmp_path, {"run_id": "run-1", "attempt_number": -1})
    assert outcome["state"] == "failed"
    assert outcome["error"]["error_class"] == "permanent"
    assert "malformed run context" in outcome["error"]["message"]
