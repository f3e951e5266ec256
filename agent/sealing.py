"""Sealed steps at the site: opening their inputs and sealing what the agent reports back.

The flow runner sealed the inputs with a key group it names in the envelope; this agent opens
them with its own copy of that group's key (``[sealing.keys]`` in its config), so the provider
gets plain inputs here, at the site. The result, and the message and traceback of an error
raised by the step's own code, are sealed with the same key group before they are journaled
or sent: the control plane stores ciphertext and digests only (docs/security.md). A result
stored at the site is sealed as a file before it is put (``meridian.core.sealedfile``,
``agent.results.upload``); only its reference, which names no data, travels in the clear.

Failures the agent or provider reports itself (a timeout, a lost process, a missing key) stay
readable: they say nothing about the step's data and the operator needs them.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from agent.actions import Assignment
from agent.reports import AttemptFinished
from meridian.core import sealing
from meridian.core.errors import SealError
from meridian.core.sealing import KeyRing
from providers.base import ErrorInfo

# Error classes of failures raised by the step's own code (meridian.stepexec); their texts
# may quote the step's data.
STEP_CODE_ERRORS = frozenset({"transient", "permanent"})


@dataclass(frozen=True)
class AttemptSeal:
    """How one attempt's outcome is sealed: persisted with its handle for re-attach."""

    key_group: str
    flow_run_id: str
    step_key: str

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> AttemptSeal | None:
        if not text:
            return None
        raw = json.loads(text)
        return cls(str(raw["key_group"]), str(raw["flow_run_id"]), str(raw["step_key"]))


def open_assignment(keys: KeyRing, a: Assignment) -> tuple[str, AttemptSeal | None]:
    """The plain inputs of ``a`` and, when they were sealed, how to seal its outcome.

    Raises SealError (naming the key group, never the key) when this agent lacks the key or
    the ciphertext does not authenticate for this run and step.
    """
    group = sealing.inputs_key_group(a.inputs_json)
    if group is None:
        return a.inputs_json, None
    keys.require(group, "this agent")
    plain = sealing.open_inputs(keys, a.inputs_json, a.flow_run_id, a.step_key)
    return plain, AttemptSeal(group, a.flow_run_id, a.step_key)


def seal_finished(keys: KeyRing, seal: AttemptSeal, finished: AttemptFinished) -> AttemptFinished:
    """``finished`` with its result and step-code error texts sealed (SealError if it cannot
    be, e.g. a result above the size limit or a key removed since the attempt started)."""
    group, run_id, key = seal.key_group, seal.flow_run_id, seal.step_key
    result_json = finished.result_json
    # A stored result is sealed already (agent.results.upload); its reference stays readable
    # so the control plane can route transfers and clean up.
    if finished.outcome == "succeeded" and not finished.result_ref_json:
        text = result_json or "null"
        result_json = sealing.seal_text(keys, group, text, sealing.RESULT, run_id, key)
    error = finished.error
    if error is not None and error.error_class in STEP_CODE_ERRORS:
        message, traceback = sealing.seal_error_texts(
            keys, group, error.message, error.traceback, run_id, key
        )
        error = dataclasses.replace(error, message=message, traceback=traceback)
    return dataclasses.replace(finished, result_json=result_json, error=error)


def seal_failure(exc: SealError) -> AttemptFinished:
    """The permanent failure of an attempt whose values cannot be opened or sealed."""
    return AttemptFinished(
        outcome="failed",
        error=ErrorInfo(
            error_class="permanent", type="meridian.core.errors.SealError", message=str(exc)
        ),
    )
