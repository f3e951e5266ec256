"""Meridian: write flows as plain Python, run their steps on agents in any cloud or site.

    from meridian import approve, flow, step

    @step(target="cloud=aws,region=us-east-1", retries=3)
    def extract(day: str) -> list[dict]: ...

    @flow
    def nightly(day: str) -> int:
        rows = extract(day)
        approve("publish", message=f"{len(rows)} rows; publish them?")  # waits for a person
        return len(rows)

Every public name is imported on first use (PEP 562): ``import meridian`` loads nothing else,
so the control plane, the agent and step processes, which import ``meridian.core`` through
this package, never pay for the SDK, the CLI or gRPC.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from meridian.client import ControlClient
    from meridian.core.errors import (
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
    from meridian.core.residency import ResidencyRefused
    from meridian.core.runcontext import NoRunContext, RunContext, context
    from meridian.core.runlog import get_logger
    from meridian.sdk.approval import Approval, approve
    from meridian.sdk.deployment_runs import DeploymentRun, run_deployment
    from meridian.sdk.flow import Flow, flow
    from meridian.sdk.futures import StepFuture, wait
    from meridian.sdk.results import ResultRef
    from meridian.sdk.step import Step, step
    from meridian.sdk.subflows import SubflowFailed

_ERRORS = "meridian.core.errors"
_RUN = "meridian.core.runcontext"  # in the core: a step process must not load the SDK
# Public name -> the module that defines it.
_HOMES = {
    "Approval": "meridian.sdk.approval",
    "ApprovalRejected": _ERRORS,
    "ApprovalTimedOut": _ERRORS,
    "BundleError": _ERRORS,
    "ConflictError": _ERRORS,
    "ConnectionFailed": _ERRORS,
    "ControlClient": "meridian.client",
    "DeploymentRun": "meridian.sdk.deployment_runs",
    "Flow": "meridian.sdk.flow",
    "MeridianError": _ERRORS,
    "NoRunContext": _RUN,
    "NotFound": _ERRORS,
    "Permanent": _ERRORS,
    "PermissionDenied": _ERRORS,
    "ResidencyRefused": "meridian.core.residency",
    "ResultRef": "meridian.sdk.results",
    "RunContext": _RUN,
    "SealError": _ERRORS,
    "SelectorError": _ERRORS,
    "Step": "meridian.sdk.step",
    "StepCancelled": _ERRORS,
    "StepFailed": _ERRORS,
    "StepFuture": "meridian.sdk.futures",
    "SubflowFailed": "meridian.sdk.subflows",
    "ValidationError": _ERRORS,
    "approve": "meridian.sdk.approval",
    "context": _RUN,
    "flow": "meridian.sdk.flow",
    "get_logger": "meridian.core.runlog",
    "run_deployment": "meridian.sdk.deployment_runs",
    "step": "meridian.sdk.step",
    "wait": "meridian.sdk.futures",
}

__all__ = [
    "Approval",
    "ApprovalRejected",
    "ApprovalTimedOut",
    "BundleError",
    "ConflictError",
    "ConnectionFailed",
    "ControlClient",
    "DeploymentRun",
    "Flow",
    "MeridianError",
    "NoRunContext",
    "NotFound",
    "Permanent",
    "PermissionDenied",
    "ResidencyRefused",
    "ResultRef",
    "RunContext",
    "SealError",
    "SelectorError",
    "Step",
    "StepCancelled",
    "StepFailed",
    "StepFuture",
    "SubflowFailed",
    "ValidationError",
    "approve",
    "context",
    "flow",
    "get_logger",
    "run_deployment",
    "step",
    "wait",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'meridian' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
