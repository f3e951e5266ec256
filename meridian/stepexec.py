"""The step entrypoint: runs ONE step call in the current process and records how it ended.

Providers start ``python -m meridian.stepexec --work-dir DIR`` (console script ``meridian-step``)
wherever the step should run. ``DIR/spec.json`` names the step and its inputs; this module
imports the step from the code bundle, calls it, and writes ``DIR/outcome.json`` atomically so
that a provider (or a re-attached agent) can read the outcome even after this process is gone.

This module owns the on-disk format of ``spec.json`` and ``outcome.json`` and the exit-code
contract (0 = succeeded, 1 = failed, 2 = the work dir itself is unusable). It imports only the
standard library and a few small ``meridian.core`` modules so that it starts fast inside a bare
bundle.

``spec.json``'s optional ``"context"`` object (``meridian.core.runcontext.RunContext``: run id,
step key, attempt id and number, environment, agent id) is what ``meridian.context()`` returns
during the call, and only during it; without one, the ``MERIDIAN_*`` variables providers set
give a smaller context.
``meridian.stepworker`` (the warm workers of the process provider) runs steps through the same
``run_step`` / ``record_outcome``, many per process.

Results and inputs by reference (docs/results.md): ``spec.json``'s ``"result"`` (a
``meridian.core.stepfiles.ResultPolicy``) says when the result goes to ``DIR/result.bin``
instead of inline (the outcome then has ``"result_file"``); ``"input_files"`` maps the sha256
of each result the inputs reference (``{"$meridian_ref": ...}``) to the local file that holds
it, and each marker is replaced by the loaded value before the call. With ``--spec-env`` there
is no work dir: a result that must be stored at the site fails the step, saying so.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import inspect
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from meridian.core import runcontext
from meridian.core.errors import Permanent
from meridian.core.resultio import InputRefError, ResultError, encode_result, load_input_refs
from meridian.core.stepfiles import (
    INPUT_FILES_KEY,
    RESULT_KEY,
    InputFile,
    ResultPolicy,
    StepFileError,
    input_files_from_value,
)

SPEC_FILE = "spec.json"
OUTCOME_FILE = "outcome.json"
RESULT_MARKER = "::meridian-outcome::"
MAX_TRACEBACK_BYTES = 64 * 1024
MAX_MESSAGE_BYTES = 8 * 1024
EXIT_SUCCEEDED = 0
EXIT_FAILED = 1
EXIT_UNUSABLE = 2


class StepSetupError(Exception):
    """The step could not be found or its inputs decoded: retrying cannot help."""


def qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _tail_bytes(text: str, limit: int) -> str:
    raw = text.encode("utf-8", errors="replace")
    if len(raw) <= limit:
        return text
    marker = "...[traceback truncated]\n"
    keep = raw[len(raw) - (limit - len(marker)) :]
    return marker + keep.decode("utf-8", errors="ignore")


def _head_bytes(text: str, limit: int) -> str:
    raw = text.encode("utf-8", errors="replace")
    if len(raw) <= limit:
        return text
    marker = "...[message truncated]"
    return raw[: limit - len(marker)].decode("utf-8", errors="ignore") + marker


def _is_permanent(exc: BaseException) -> bool:
    # Walk the explicit ``raise ... from`` chain only; implicit __context__ is an accident of
    # where the error happened, not a statement by the step author.
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, Permanent | StepSetupError):
            return True
        seen.add(id(current))
        current = current.__cause__
    return False


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # a broken __str__ must not hide the original failure
        return f"<unprintable {type(exc).__name__}>"


def error_outcome(exc: BaseException) -> dict[str, Any]:
    """The outcome document of a failed step (StepSetupError reports its original type)."""
    reported: BaseException = exc
    if isinstance(exc, StepSetupError) and exc.__cause__ is not None:
        reported = exc.__cause__  # name the real problem (ModuleNotFoundError, TypeError, ...)
    message = _safe_str(exc)
    mro = [qualified_name(c) for c in type(reported).__mro__ if c is not object]
    tb = "".join(traceback.format_exception(exc))
    return {
        "state": "failed",
        "error": {
            "error_class": "permanent" if _is_permanent(exc) else "transient",
            "type": qualified_name(type(reported)),
            "message": _head_bytes(message, MAX_MESSAGE_BYTES),
            "traceback": _tail_bytes(tb, MAX_TRACEBACK_BYTES),
            "type_mro": mro,
        },
    }


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` so readers see either nothing or the whole file, even after a crash."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _import_step(module: str, function: str, step_key: str) -> Callable[..., Any]:
    try:
        obj: Any = importlib.import_module(module)
    except ImportError as exc:
        raise StepSetupError(
            f"step {step_key!r}: cannot import module {module!r}: {_safe_str(exc)}"
        ) from exc
    for i, part in enumerate(function.split(".")):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            where = ".".join([module, *function.split(".")[:i]])
            raise StepSetupError(
                f"step {step_key!r}: {where!r} has no attribute {part!r} "
                f"(looking for function {function!r} in module {module!r})"
            ) from exc
    if getattr(obj, "__meridian_step__", False):
        obj = obj.fn
    if not callable(obj):
        problem = f"step {step_key!r}: {module}.{function} is a {type(obj).__name__}, not callable"
        raise StepSetupError(problem) from TypeError(problem)
    return obj  # type: ignore[no-any-return]


def _decode_inputs(inputs_json: str, step_key: str) -> tuple[list[Any], dict[str, Any]]:
    try:
        raw = json.loads(inputs_json or '{"args": [], "kwargs": {}}')
        if isinstance(raw, dict) and "sealed" in raw:
            # The agent opens sealed inputs before a provider ever sees them; running the step
            # with the envelope's empty args instead would be silently wrong.
            raise ValueError("the inputs are still sealed (the agent must open them first)")
        args = raw.get("args", [])
        kwargs = raw.get("kwargs", {})
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise ValueError('expected {"args": [...], "kwargs": {...}}')
    except (ValueError, AttributeError) as exc:
        raise StepSetupError(f"step {step_key!r}: cannot decode inputs: {_safe_str(exc)}") from exc
    return args, kwargs


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _result_policy(spec: dict[str, Any], step_key: str) -> ResultPolicy | None:
    """The spec's result policy; None from an agent that predates it (inline JSON only)."""
    raw = spec.get(RESULT_KEY)
    if raw is None:
        return None
    try:
        return ResultPolicy.from_value(raw)
    except (StepFileError, TypeError) as exc:
        raise StepSetupError(f"step {step_key!r}: malformed result policy: {exc}") from exc


def _input_files(spec: dict[str, Any], step_key: str) -> dict[str, InputFile]:
    raw = spec.get(INPUT_FILES_KEY)
    if raw is None:
        return {}
    try:
        return input_files_from_value(raw)
    except (StepFileError, TypeError) as exc:
        raise StepSetupError(f"step {step_key!r}: malformed input files: {exc}") from exc


def _resolve_inputs(
    args: list[Any],
    kwargs: dict[str, Any],
    files: dict[str, InputFile],
    policy: ResultPolicy | None,
    step_key: str,
) -> tuple[list[Any], dict[str, Any]]:
    """Replace each input reference marker by the value its input file holds."""
    try:
        return load_input_refs(
            args, kwargs, files, allow_pickle=policy is not None and policy.allow_pickle
        )
    except InputRefError as exc:
        raise StepSetupError(f"step {step_key!r}: {exc}") from exc


def _encode_result(
    result: Any, policy: ResultPolicy | None, work_dir: Path | None, step_key: str
) -> dict[str, Any]:
    try:
        return encode_result(result, policy, work_dir)
    except ResultError as exc:
        raise StepSetupError(
            f"step {step_key!r} returned a value of type {type(result).__qualname__!r} "
            f"that cannot be handed back: {_safe_str(exc)}"
        ) from TypeError(_safe_str(exc))


def run_step(spec: dict[str, Any], work_dir: Path | None = None) -> dict[str, Any]:
    """Import, call and encode one step; return its outcome document (never raises).

    ``work_dir`` is where a result too large to go inline is written (``result.bin``);
    None when there is none (``--spec-env``): such a result fails the step.
    """
    step_key = str(spec.get("step_key", "?"))
    try:
        ctx = runcontext.step_context_of(spec)
    except (ValueError, TypeError) as exc:
        return error_outcome(
            StepSetupError(f"step {step_key!r}: malformed run context: {_safe_str(exc)}")
        )
    try:
        with runcontext.step_scope(ctx):
            return _call_step(spec, step_key, work_dir)
    finally:
        # A step may have re-levelled or silenced meridian.get_logger(); the next step of a
        # warm worker starts from the defaults. Only if a step ever loaded it (no import cost).
        runlog = sys.modules.get("meridian.core.runlog")
        if runlog is not None:
            runlog.reset()


def _call_step(spec: dict[str, Any], step_key: str, work_dir: Path | None) -> dict[str, Any]:
    try:
        bundle_dir = spec.get("bundle_dir")
        if bundle_dir and str(bundle_dir) not in sys.path:
            # A warm worker runs many steps of one bundle: put it on the path once.
            sys.path.insert(0, str(bundle_dir))
        policy = _result_policy(spec, step_key)
        files = _input_files(spec, step_key)
        fn = _import_step(str(spec["module"]), str(spec["function"]), step_key)
        args, kwargs = _decode_inputs(str(spec.get("inputs_json", "")), step_key)
        args, kwargs = _resolve_inputs(args, kwargs, files, policy, step_key)
        result = fn(*args, **kwargs)
        if inspect.isawaitable(result):
            result = asyncio.run(_await(result))
        return {"state": "succeeded", **_encode_result(result, policy, work_dir, step_key)}
    except BaseException as exc:  # SystemExit/KeyboardInterrupt in a step are failures too
        return error_outcome(exc)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="meridian-step", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--work-dir", type=Path, help="holds spec.json; outcome.json is written")
    source.add_argument(
        "--spec-env",
        metavar="VAR",
        help="read the spec (JSON) from this environment variable: for containers, where the "
        "code is baked into the image and the outcome travels as the result marker",
    )
    parser.add_argument(
        "--result-marker",
        action="store_true",
        help=f"also print the outcome as one '{RESULT_MARKER}<json>' line on stdout",
    )
    return parser.parse_args(argv)


def _load_spec(args: argparse.Namespace) -> dict[str, Any]:
    if args.spec_env:
        return parse_spec(os.environ.get(args.spec_env, ""), f"${args.spec_env}")
    return load_spec_file(args.work_dir.resolve())


def parse_spec(text: str, origin: str) -> dict[str, Any]:
    spec = json.loads(text) if text else None
    if not isinstance(spec, dict):
        raise ValueError(f"{origin} must hold a JSON object")
    return spec


def load_spec_file(work_dir: Path) -> dict[str, Any]:
    """``work_dir/spec.json``: the only description of the step an executor trusts."""
    path = work_dir / SPEC_FILE
    return parse_spec(path.read_text(encoding="utf-8"), str(path))


def flush_output() -> None:
    """Flush the step's own output so its logs are complete before the outcome appears."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()


def record_outcome(work_dir: Path, text: str) -> None:
    """Write ``work_dir/outcome.json``: from here on a (re-attached) agent can collect it."""
    write_atomic(work_dir / OUTCOME_FILE, text)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        spec = _load_spec(args)
    except (OSError, ValueError) as exc:
        print(f"meridian-step: cannot read the step spec: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    work_dir = args.work_dir.resolve() if args.work_dir is not None else None
    outcome = run_step(spec, work_dir)
    text = json.dumps(outcome)
    flush_output()
    if work_dir is not None:
        record_outcome(work_dir, text)
    if args.result_marker or args.spec_env:
        out = sys.__stdout__ or sys.stdout
        # Readers look for the last marker, so output the step left unterminated is harmless.
        out.write(f"{RESULT_MARKER}{text}\n")
        out.flush()
    return EXIT_SUCCEEDED if outcome["state"] == "succeeded" else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
