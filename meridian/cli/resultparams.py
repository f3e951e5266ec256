"""``-p NAME=@result:RUN_ID/STEP_KEY``: a flow parameter that is a stored result of an earlier
run, passed by reference (docs/user-guide.md, "Passing a stored result as a parameter").

The CLI reads the run (``GetRun``; RUN_ID is a full id or a unique prefix), takes the step's
stored result reference and puts its marker (``{"$meridian_ref": ...}``) in place of the text;
the run's parameters carry the reference, never the bytes. The flow body receives a
``meridian.ResultRef``; passing it to a step is checked by the control plane like any other
reference (recorded in a run the caller may read). Only results stored at their site qualify:
an inline result is refused with how to pass its value instead.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from meridian import models
from meridian.cli.common import UsageError, connect
from meridian.cli.results import find_step
from meridian.core.errors import ConflictError, NotFound, ValidationError
from meridian.core.resultref import ResultRef, ref_marker

PREFIX = "@result:"
# Bounds of the two parts (the control plane's own: run ids are UUIDs, step keys 1-512).
MAX_RUN_CHARS = 36
MAX_STEP_KEY_CHARS = 512
_WITH_RESULT = frozenset({"COMPLETED", "CACHED"})


class RunReader(Protocol):
    """The part of ``ControlClient`` that reads a run."""

    def get_run(self, run_id_or_prefix: str) -> models.RunDetail: ...


@dataclass(frozen=True)
class ResultParam:
    """``@result:RUN/STEP_KEY``: the stored result of step ``step_key`` of run ``run``."""

    run: str
    step_key: str


def parse_result_param(name: str, text: str) -> ResultParam | None:
    """The stored result ``text`` names, or None when it is an ordinary value.

    The step key is everything after the first ``/`` (step keys may contain ``/``).

    Raises:
        UsageError: ``text`` starts with ``@result:`` but is not ``@result:RUN_ID/STEP_KEY``.
    """
    if not text.startswith(PREFIX):
        return None
    run, sep, step_key = text[len(PREFIX) :].partition("/")
    run = run.strip()
    if not sep or not run or not step_key:
        raise UsageError(
            f"parameter {name!r}: expected {PREFIX}RUN_ID/STEP_KEY (e.g. "
            f"{PREFIX}3f2a9c/extract#1), got {text[:80]!r}"
        )
    if len(run) > MAX_RUN_CHARS or len(step_key) > MAX_STEP_KEY_CHARS:
        raise UsageError(
            f"parameter {name!r}: a run id has at most {MAX_RUN_CHARS} characters and a step "
            f"key at most {MAX_STEP_KEY_CHARS}"
        )
    return ResultParam(run, step_key)


def wanted_results(params: Mapping[str, str]) -> dict[str, ResultParam]:
    """The parameters that name stored results, by parameter name (checked syntax)."""
    wanted: dict[str, ResultParam] = {}
    for name, text in params.items():
        param = parse_result_param(name, text)
        if param is not None:
            wanted[name] = param
    return wanted


def stored_result_ref(detail: models.RunDetail, step_key: str) -> ResultRef:
    """The reference of the result ``step_key`` of the run ``detail`` stored at its site.

    Raises:
        NotFound: the run has no such step.
        ConflictError: the step has no result (it did not complete).
        ValidationError: its result is inline (kept by the control plane), not stored.
    """
    step = find_step(detail, step_key)
    run_id = detail.flow_run_id
    if step.state not in _WITH_RESULT:
        raise ConflictError(f"step {step.key!r} of run {run_id} has no result: it is {step.state}")
    if not step.result_ref_json:
        raise ValidationError(
            f"the result of step {step.key!r} of run {run_id} is inline (JSON kept by the "
            f"control plane), not stored at its site: {PREFIX} passes stored results only; "
            f"pass its value instead (`meridian results get {run_id} '{step.key}'` prints it)"
        )
    return ResultRef.from_json(step.result_ref_json)


def resolve_result_params(client: RunReader, params: Mapping[str, str]) -> dict[str, Any]:
    """``params`` with each ``@result:`` text replaced by its stored result's marker; each
    run is read once, however many parameters name it."""
    wanted = wanted_results(params)
    runs: dict[str, models.RunDetail] = {}
    resolved: dict[str, Any] = dict(params)
    for name, param in wanted.items():
        try:
            if param.run not in runs:
                runs[param.run] = client.get_run(param.run)
            ref = stored_result_ref(runs[param.run], param.step_key)
        except (NotFound, ConflictError, ValidationError) as exc:
            # The same error, naming the parameter it is about.
            raise type(exc)(f"parameter {name!r}: {exc}") from None
        resolved[name] = ref_marker(ref)
    return resolved


def with_stored_results(args: argparse.Namespace, params: Mapping[str, str]) -> dict[str, Any]:
    """``resolve_result_params`` over the command's connection; connects only when a
    parameter names a stored result."""
    if not wanted_results(params):
        return dict(params)
    with connect(args) as client:
        return resolve_result_params(client, params)
