"""Reading what ``meridian.stepexec`` reports: ``outcome.json`` or its stdout marker line.

Providers that run steps through the step entrypoint share this reader. The file names and the
marker mirror the constants in ``meridian.stepexec`` (the writer); a test pins them together.
This module deliberately imports nothing from ``meridian`` beyond ``meridian.core`` so that
``providers/`` stays free of SDK imports.

A succeeded outcome carries either ``result_json`` or ``result_file`` (the result the step
wrote to a file next to the outcome: a plain file name, its size, sha256 and serializer). Only
an outcome read from a directory may name a file: one that arrives as a stdout marker comes
from a step whose files the agent cannot see.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from providers.base import ErrorInfo, Outcome, ResultFile

SPEC_FILE = "spec.json"
OUTCOME_FILE = "outcome.json"
RESULT_MARKER = "::meridian-outcome::"

_ERROR_CLASSES = {
    "transient",
    "permanent",
    "infrastructure",
    "timeout",
    "lost_agent",
    "cancelled",
    "scheduling",
}


def _unreadable(why: str) -> Outcome:
    return Outcome(
        state="failed",
        error=ErrorInfo(
            error_class="infrastructure",
            type="providers.base.ProviderError",
            message=f"the step's outcome could not be read: {why}",
        ),
    )


def _error_detail(raw: Any) -> ErrorInfo:
    if not isinstance(raw, dict):
        raise ValueError("'error' must be an object")
    error_class = str(raw.get("error_class", "transient"))
    if error_class not in _ERROR_CLASSES:
        raise ValueError(f"unknown error_class {error_class!r}")
    return ErrorInfo(
        error_class=error_class,
        type=str(raw.get("type", "")),
        message=str(raw.get("message", "")),
        traceback=str(raw.get("traceback", "")),
        type_mro=tuple(str(t) for t in raw.get("type_mro", ())),
    )


def _succeeded(raw: dict[str, Any], allow_result_file: bool) -> Outcome:
    if "result_file" in raw:
        if "result_json" in raw:
            raise ValueError("an outcome has 'result_json' or 'result_file', not both")
        if not allow_result_file:
            raise ValueError(
                "the step wrote its result to a file, but this provider returns results "
                "inline only (the outcome travels on the step's output)"
            )
        return Outcome(state="succeeded", result_file=ResultFile.from_value(raw["result_file"]))
    result = raw.get("result_json")
    if not isinstance(result, str):
        raise ValueError("'result_json' must be a string")
    return Outcome(state="succeeded", result_json=result)


def parse_outcome(text: str, *, allow_result_file: bool = True) -> Outcome:
    """Turn an outcome document into an Outcome; a malformed one is an infrastructure failure.

    ``exit_code`` is left unset: only the caller knows how the process ended.
    ``allow_result_file``: False where the result file could not be read (a stdout marker).
    """
    try:
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError("expected a JSON object")
        if raw.get("state") == "succeeded":
            return _succeeded(raw, allow_result_file)
        if raw.get("state") == "failed":
            return Outcome(state="failed", error=_error_detail(raw.get("error")))
        raise ValueError(f"unknown state {raw.get('state')!r}")
    except ValueError as exc:
        return _unreadable(str(exc))


def read_outcome(work_dir: Path | str) -> Outcome | None:
    """The outcome recorded in ``work_dir/outcome.json``, or None when none was written yet."""
    path = Path(work_dir) / OUTCOME_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        return _unreadable(f"{path}: {exc}")
    outcome = parse_outcome(text)
    if outcome.result_file is not None:
        # The result file is next to the outcome, wherever the step's directory was.
        outcome = dataclasses.replace(outcome, result_dir=Path(work_dir))
    return outcome


def parse_result_marker(output: str) -> Outcome | None:
    """The outcome from the last ``::meridian-outcome::`` line of captured stdout, if any.

    For providers whose steps run where no shared file system exists (containers, clusters).
    """
    at = output.rfind(RESULT_MARKER)
    if at < 0:
        return None
    line = output[at + len(RESULT_MARKER) :].split("\n", 1)[0]
    return parse_outcome(line, allow_result_file=False)


TIMEOUT_MRO = ("builtins.TimeoutError", "builtins.OSError", "builtins.Exception")
CANCEL_MRO = (
    "meridian.core.errors.StepCancelled",
    "meridian.core.errors.StepFailed",
    "meridian.core.errors.MeridianError",
    "builtins.Exception",
)


def timeout_detail(message: str) -> ErrorInfo:
    """How every provider reports an attempt it stopped for running past its timeout."""
    return ErrorInfo("timeout", TIMEOUT_MRO[0], message, "", TIMEOUT_MRO)


def cancelled_detail(message: str = "step was cancelled") -> ErrorInfo:
    """How every provider reports an attempt it stopped because it was cancelled."""
    return ErrorInfo("cancelled", CANCEL_MRO[0], message, "", CANCEL_MRO)
