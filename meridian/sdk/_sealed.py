"""Sealing on the flow runner's side: opening what sealed steps send back, and sealing or
masking what the flow run itself reports to the control plane (docs/security.md).

Inputs are sealed by ``FlowContext.seal_inputs`` when a step is submitted; the agent opens
them, runs the step, and seals its result (and, when the step's own code failed, the error's
message and traceback) with the same key group. Everything here is pure: no I/O.
"""

from __future__ import annotations

import dataclasses

from meridian import models
from meridian.core import sealing
from meridian.core.errors import SealError, StepFailed, ValidationError
from meridian.core.resultref import ResultRef
from meridian.core.sealing import KeyRing

_COMPLETED_STATES = frozenset({"COMPLETED", "CACHED"})
SEALED_NOTE = "[sealed: {group}]"
MIN_MASKED_CHARS = 8


def open_outcome(
    keys: KeyRing, outcome: models.StepOutcome, flow_run_id: str, group: str
) -> models.StepOutcome:
    """``outcome`` of a step sealed with ``group``, with its result and error texts opened.

    Raises SealError when a completed step's result is not sealed with ``group`` (it did not
    come from an agent holding the key) or does not authenticate. A result that stayed at its
    site must be stored sealed; its bytes are opened when they are loaded.
    """
    result_json = outcome.result_json
    if outcome.state in _COMPLETED_STATES and outcome.result_ref_json:
        if not _ref_is_sealed(outcome.result_ref_json):
            raise SealError(
                f"the stored result of sealed step {outcome.key} is not sealed (key group "
                f"{group!r}): refusing it; was it produced by an agent without the key?"
            )
    elif outcome.state in _COMPLETED_STATES:
        result_json = sealing.open_text(
            keys, result_json, sealing.RESULT, flow_run_id, outcome.key, group
        )
    error = outcome.error
    if error is not None:
        error = dataclasses.replace(
            error,
            message=sealing.open_error_text(
                keys, error.message, sealing.ERROR_MESSAGE, flow_run_id, outcome.key, group
            ),
            traceback=sealing.open_error_text(
                keys, error.traceback, sealing.ERROR_TRACEBACK, flow_run_id, outcome.key, group
            ),
        )
    return dataclasses.replace(outcome, result_json=result_json, error=error)


def _ref_is_sealed(ref_json: str) -> bool:
    try:
        return ResultRef.from_json(ref_json).sealed
    except ValidationError:
        return True  # not a sealing problem: applying the outcome reports the bad reference


def seal_flow_error(
    keys: KeyRing, group: str, flow_run_id: str, error: models.ErrorInfo
) -> models.ErrorInfo:
    """The flow run's own error with its message and traceback sealed (type and class stay
    readable: the control plane's summary and retry decisions use them)."""
    message, traceback = sealing.seal_error_texts(
        keys, group, error.message, error.traceback, flow_run_id, sealing.FLOW
    )
    return dataclasses.replace(error, message=message, traceback=traceback)


def sealed_failures(exc: BaseException) -> list[StepFailed]:
    """The sealed steps' failures in ``exc`` and the exceptions it was raised from or during."""
    found: list[StepFailed] = []
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, StepFailed) and current.sealed_with:
            found.append(current)
        pending += [current.__cause__, current.__context__]
    return found


def mask_opened_texts(text: str, failures: list[StepFailed]) -> str:
    """``text`` without the opened message and traceback of each sealed step failure.

    Runs on the full text before any truncation, so no fragment escapes the replacement. A
    message shorter than ``MIN_MASKED_CHARS`` is masked only as part of the failure's own
    ``str()``: replacing every occurrence of a word or two would garble the text.
    """
    for failure in failures:
        note = SEALED_NOTE.format(group=failure.sealed_with)
        masked_str = (
            f"step {failure.step_key} failed ({failure.error_class}): {failure.error_type}: {note}"
        )
        text = text.replace(str(failure), masked_str)
        if failure.remote_traceback:
            text = text.replace(failure.remote_traceback, note)
        if len(failure.remote_message) >= MIN_MASKED_CHARS:
            text = text.replace(failure.remote_message, note)
    return text
