"""Pins the public names of `meridian` (docs/architecture.md, "Conventions")."""

from __future__ import annotations

import meridian
import meridian.sdk


def test_meridian_all_is_pinned() -> None:
    assert sorted(meridian.__all__) == [
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
    for name in meridian.__all__:
        assert getattr(meridian, name) is not None


def test_sdk_all_is_pinned() -> None:
    assert sorted(meridian.sdk.__all__) == [
        "Approval",
        "Flow",
        "Step",
        "StepFuture",
        "approve",
        "flow",
        "step",
        "wait",
    ]


def test_error_tree() -> None:
    assert issubclass(meridian.StepCancelled, meridian.StepFailed)
    assert issubclass(meridian.StepFailed, meridian.MeridianError)
    assert issubclass(meridian.SelectorError, meridian.ValidationError)
    assert issubclass(meridian.SealError, meridian.MeridianError)
    assert issubclass(meridian.ApprovalRejected, meridian.MeridianError)
    assert issubclass(meridian.ApprovalTimedOut, meridian.ApprovalRejected)
    assert not issubclass(meridian.ApprovalRejected, meridian.StepFailed)
    assert not issubclass(meridian.Permanent, meridian.MeridianError)
    assert issubclass(meridian.NoRunContext, meridian.MeridianError)
    assert issubclass(meridian.ResidencyRefused, meridian.PermissionDenied)
