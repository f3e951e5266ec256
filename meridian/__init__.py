"""Meridian: write flows as plain Python, run their steps on agents in any cloud or site.

    from meridian import approve, flow, step

    @step(target="cloud=aws,region=us-east-1", retries=3)
    def extract(day: str) -> list[dict]: ...

    @flow
    def nightly(day: str) -> int:
        rows = extract(day)
        approve("publish", message=f"{len(rows)} rows; publish them?")  # waits for a person
        return len(rows)

This file re-exports the public names; ``ControlClient`` is imported lazily so that importing
``meridian`` (as every step module does on an agent) does not load gRPC.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meridian.errors import (
    ApprovalRejected,
    ApprovalTimedOut,
    BundleError,
    ConflictError,
    ConnectionFailed,
    MeridianError,
    NotFound,
    Permanent,
    PermissionDenied,
    SealError,
    SelectorError,
    StepCancelled,
    StepFailed,
    ValidationError,
)
from meridian.sdk import Approval, Flow, Step, StepFuture, approve, flow, step, wait

if TYPE_CHECKING:
    from meridian.client import ControlClient

__all__ = [
    "Approval",
    "ApprovalRejected",
    "ApprovalTimedOut",
    "BundleError",
    "ConflictError",
    "ConnectionFailed",
    "ControlClient",
    "Flow",
    "MeridianError",
    "NotFound",
    "Permanent",
    "PermissionDenied",
    "SealError",
    "SelectorError",
    "Step",
    "StepCancelled",
    "StepFailed",
    "StepFuture",
    "ValidationError",
    "approve",
    "flow",
    "step",
    "wait",
]


def __getattr__(name: str) -> Any:
    if name == "ControlClient":
        from meridian.client import ControlClient

        return ControlClient
    raise AttributeError(f"module 'meridian' has no attribute {name!r}")
