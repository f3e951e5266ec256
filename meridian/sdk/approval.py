"""``approve``: a human decision inside a flow body; the run is PAUSED until it is taken.

Called in a running flow, ``approve("deploy", message=..., timeout=...)`` asks the control
plane for approval ``deploy#n`` (the n-th approval named ``deploy`` in the run; ``key=``
gives an explicit key, as for steps) and blocks the body until an operator runs
``meridian runs approve RUN deploy#1`` (or ``reject``):

* approved: returns an :class:`Approval` (who, why, when);
* rejected: raises ``ApprovalRejected``;
* nobody decided within ``timeout`` seconds: raises ``ApprovalTimedOut`` (the control plane
  keeps the timer, so it fires even while this runner is gone);
* the run was cancelled while waiting: raises ``StepCancelled``.

Keys make it replay-safe: the body of a resumed run (``meridian runs resume``) gets the
stored decision of an approval that was already decided instead of asking again. The
decision reaches this process on the runner's watch stream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from meridian import models
from meridian.core.errors import (
    ApprovalRejected,
    ApprovalTimedOut,
    ConflictError,
    MeridianError,
    ValidationError,
)
from meridian.sdk._options import check_key
from meridian.sdk.context import current_context

MAX_MESSAGE_BYTES = 4 * 1024
MIN_TIMEOUT_S = 1.0
MAX_TIMEOUT_S = 30 * 24 * 3600.0


@dataclass(frozen=True)
class Approval:
    """A given approval: its key, who approved it (the audit actor), why, and when."""

    key: str
    approved_by: str
    reason: str
    at: datetime | None


def approve(
    name: str, *, message: str = "", timeout: float | None = None, key: str | None = None
) -> Approval:
    """Wait in the flow body until an operator approves (see the module docstring).

    Args:
        name: what is approved, e.g. "deploy"; the key is ``name#n`` for its n-th use.
        message: shown to whoever decides (at most 4 KiB), e.g. what will happen and where
            to look first.
        timeout: seconds (1 s to 30 days) after the first request before the approval
            times out; None waits until someone decides.
        key: an explicit key instead of ``name#n`` (no '#'), for calls whose order can
            change between replays.

    Raises:
        ApprovalRejected: an operator rejected it (``reason`` and ``decided_by`` say why, who).
        ApprovalTimedOut: nobody decided within ``timeout``.
        StepCancelled: the run was cancelled (or ended) while waiting.
        ValidationError: bad arguments, or called outside a running flow.
    """
    where = f"approve({name!r})"
    _check_arguments(name, message, timeout, key, where)
    context = current_context()
    if context is None:
        raise ValidationError(
            f"{where} was called outside a running flow: approvals are asked by a flow body "
            "that `meridian run` (or `meridian runs resume`) runs"
        )
    ask = getattr(context.client, "request_approval", None)
    if ask is None:
        raise MeridianError(f"{where}: this flow runner's client cannot ask for approvals")
    number = context.next_approval_number(name)
    approval_key = key if key is not None else f"{name}#{number}"
    waiter = context.approvals.expect(approval_key)
    try:
        state: models.ApprovalState = ask(
            context.flow_run_id, approval_key, message, float(timeout or 0.0)
        )
        context.approvals.offer(state.approval)
        info = waiter.wait()
    except ConflictError:
        # The run stopped taking requests (e.g. cancelled): say so the way waiters learn it.
        if waiter.error is not None:
            raise waiter.error from None
        raise
    finally:
        context.approvals.forget(approval_key)
    return _outcome(info)


def _outcome(info: models.ApprovalInfo) -> Approval:
    if info.state == "approved":
        return Approval(info.key, info.decided_by, info.reason, info.decided_at)
    if info.state == "rejected":
        raise ApprovalRejected(info.key, info.decided_by, info.reason)
    if info.state == "timed_out":
        raise ApprovalTimedOut(info.key, info.reason or "nobody decided in time")
    raise MeridianError(f"approval {info.key} ended in an unknown state {info.state!r}")


def _check_arguments(name: Any, message: Any, timeout: Any, key: Any, where: str) -> None:
    if not isinstance(name, str) or not name.strip() or "#" in name or len(name) > 200:
        raise ValidationError(
            f"{where}: name must be a non-empty string of at most 200 characters without '#'"
        )
    check_key(key, where, allow_callable=False)
    if not isinstance(message, str) or len(message.encode()) > MAX_MESSAGE_BYTES:
        raise ValidationError(f"{where}: message must be a string of at most 4 KiB")
    if timeout is None:
        return
    ok = (
        isinstance(timeout, int | float)
        and not isinstance(timeout, bool)
        and math.isfinite(timeout)
        and MIN_TIMEOUT_S <= timeout <= MAX_TIMEOUT_S
    )
    if not ok:
        raise ValidationError(
            f"{where}: timeout must be None or between {MIN_TIMEOUT_S:g} and "
            f"{MAX_TIMEOUT_S:.0f} seconds (30 days), got {timeout!r}"
        )
