"""Subflows: a ``@flow(subflow=True)`` called inside a running flow body runs as a child run.

The child is created through the parent's runner (its run token, ``CreateRun`` with
``parent_run_id`` and ``parent_key``), its body runs here, in the parent's process, with its
own run token (its steps belong to the child run), and its result is returned to the parent.
The key is ``<flow name>#<n>`` (the n-th call of that subflow in the body, like a step's), so
a resumed parent gets the same child back: a completed child's stored result is returned
without running it again; one that failed, crashed or was cancelled was reopened by the
control plane and runs again here, reusing its completed steps.
"""

from __future__ import annotations

import inspect
import json
from typing import Any

from meridian.core.errors import MeridianError
from meridian.core.runcontext import context
from meridian.sdk.context import FlowContext
from meridian.sdk.params import encode_params

SUBFLOW_TRIGGER = "subflow"


class SubflowFailed(MeridianError):
    """A subflow's run did not complete; raised in the parent's body at the call."""

    def __init__(self, flow_run_id: str, state: str, message: str) -> None:
        super().__init__(f"subflow run {flow_run_id} ended {state}: {message}")
        self.flow_run_id = flow_run_id
        self.state = state


def run_subflow(
    parent: FlowContext, flow: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Run ``flow`` (a ``Flow``) as a child run of ``parent``'s run; returns its result."""
    from meridian.sdk.runner import execute_body  # the runner imports flows: import late

    bound = inspect.signature(flow.fn).bind(*args, **kwargs)
    bound.apply_defaults()
    params = dict(bound.arguments)
    key = f"{flow.name}#{parent.next_call_number('subflow:' + flow.name)}"
    client: Any = parent.client
    child_id = client.create_run(
        flow.name,
        f"{flow.fn.__module__}:{flow.name}",
        encode_params(params),
        "",  # the parent's code bundle
        SUBFLOW_TRIGGER,
        parent_run_id=parent.flow_run_id,
        parent_key=key,
    )
    child = client.with_token(client.runner_tokens[child_id])
    detail = child.get_run(child_id)
    if detail.state == "COMPLETED":  # a resumed parent: reuse what the child returned
        return json.loads(detail.result_json) if detail.result_json else None
    outcome = execute_body(
        child,
        child_id,
        flow.fn,
        params,
        watch_after_event_id=_resume_watermark(detail),
        seal=flow.seal,
        flow_name=flow.name,
        environment=context().environment,  # the parent's runner runs this body
        typed_params=True,  # called here with Python values: no JSON to convert
    )
    if outcome.succeeded:
        return outcome.result
    message = f"{outcome.error.type}: {outcome.error.message}" if outcome.error else "no error"
    raise SubflowFailed(child_id, outcome.state, message)


def _resume_watermark(detail: Any) -> int:
    """Events of a reopened child before its last resume are history: watch after them."""
    if detail.resumed_at is None:
        return 0
    running = [e.event_id for e in detail.events if e.kind == "run.running"]
    return max(running) - 1 if running else 0
