"""``meridian.run_deployment``: start a run of a deployment, as a child of the running flow.

Called in a flow body, the deployment's run is a child of the current run (``TriggerDeployment``
with ``parent_run_id`` and ``parent_key`` through the runner's own token): it runs on a hosted
runner like any deployment run, cancelling the parent cancels it, the parent's ``runs show``
lists it, and the audit record names both. The key is ``deployment:<name>#<n>`` (the n-th call
of that deployment in the body, counted like steps), so a parent replayed by resume gets the
same child back instead of starting another: a completed child's result is returned at once.

With ``wait=True`` (the default) the call follows the child to its end (the parent's token may
read its direct children) and returns its result, or raises ``SubflowFailed`` when it ended
FAILED, CANCELLED or CRASHED, and ``TimeoutError`` when ``timeout`` seconds passed first (the
child goes on). With ``wait=False`` it returns a :class:`DeploymentRun` handle at once.

Outside a flow body there is no parent: the run is triggered on its own through ``client``
(a ``ControlClient`` with an operator's token), which must then be given.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any

from meridian.core.errors import MeridianError, ValidationError
from meridian.sdk.context import current_context
from meridian.sdk.params import encode_params
from meridian.sdk.subflows import SubflowFailed

ENDED = frozenset({"COMPLETED", "FAILED", "CANCELLED", "CRASHED"})


class DeploymentRun:
    """A run of a deployment started by :func:`run_deployment` (``wait=False``)."""

    def __init__(self, client: Any, deployment: str, flow_run_id: str, existing: bool) -> None:
        self._client = client
        self.deployment = deployment
        self.flow_run_id = flow_run_id
        # True when the same key had started it before (a resumed parent, a repeated key).
        self.existing = existing

    def __repr__(self) -> str:
        return f"<DeploymentRun {self.deployment} {self.flow_run_id}>"

    @property
    def state(self) -> str:
        """The run's state now (read from the control plane)."""
        return str(self._client.get_run(self.flow_run_id).state)

    def wait(self, timeout: float | None = None) -> Any:
        """Follow the run to its end and return its result (see the module docstring)."""
        if timeout is not None and timeout <= 0:
            raise ValidationError("timeout must be a positive number of seconds")
        detail = self._client.get_run(self.flow_run_id)
        if detail.state not in ENDED:
            self._watch(timeout)
            detail = self._client.get_run(self.flow_run_id)
        if detail.state not in ENDED:
            raise TimeoutError(
                f"deployment run {self.flow_run_id} of {self.deployment} is still "
                f"{detail.state} after {timeout:g} s; it goes on"
            )
        if detail.state != "COMPLETED":
            error = detail.error
            message = f"{error.type}: {error.message}" if error is not None else "no error"
            raise SubflowFailed(self.flow_run_id, detail.state, message)
        return json.loads(detail.result_json) if detail.result_json else None

    def _watch(self, timeout: float | None) -> None:
        """Block until the run's watch stream ends (the run ended) or ``timeout`` passed."""
        stream = self._client.watch_run_batches(self.flow_run_id)
        timer = threading.Timer(timeout, stream.cancel) if timeout is not None else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        try:
            for _ in stream:
                pass
        except MeridianError:
            if timer is None or timer.is_alive():
                raise  # not our own cancel at the deadline
        finally:
            if timer is not None:
                timer.cancel()


def run_deployment(
    name: str,
    parameters: Mapping[str, Any] | None = None,
    *,
    wait: bool = True,
    timeout: float | None = None,
    idempotency_key: str | None = None,
    client: Any = None,
) -> Any:
    """Run deployment ``name`` with ``parameters``; in a flow body as a child of its run.

    Returns the run's result (``wait=True``) or a :class:`DeploymentRun` (``wait=False``).
    Raises ``SubflowFailed`` if it did not complete, ``MeridianError`` when the deployment
    skipped the trigger (paused, concurrency overflow ``skip``) or refused the parameters.
    """
    if not isinstance(name, str) or not name:
        raise ValidationError("run_deployment needs the deployment's name")
    params = encode_params(dict(parameters or {}))
    parent = current_context()
    if parent is not None:
        number = parent.next_call_number(f"deployment:{name}")
        caller: Any = client or parent.client
        answer = caller.trigger_deployment(
            name,
            params,
            idempotency_key=idempotency_key or "",
            parent_run_id=parent.flow_run_id,
            parent_key=f"deployment:{name}#{number}",
        )
    else:
        if client is None:
            raise ValidationError(
                "run_deployment outside a flow body needs client=ControlClient(...) "
                "(an operator's token): there is no parent run to trigger it through"
            )
        caller = client
        answer = caller.trigger_deployment(name, params, idempotency_key=idempotency_key or "")
    if not answer.flow_run_id:
        raise MeridianError(f"deployment {name} started no run: {answer.message}")
    run = DeploymentRun(caller, name, answer.flow_run_id, answer.existing)
    return run.wait(timeout) if wait else run
