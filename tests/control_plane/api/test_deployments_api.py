"""Decoding a deployment spec at the gRPC edge: what the SDK sends arrives as it was meant,
an explicit 0 included (proto3 ``optional``: unset means the default, 0 means 0)."""

from __future__ import annotations

from typing import Any

import pytest

from control_plane.api.deployments_api import spec_from_proto
from control_plane.orchestration.deployment_specs import DeploymentSpec, validate_spec
from meridian import _deployments
from meridian.core.errors import ValidationError

EVERY_5S = {"kind": "interval", "every_seconds": 5, "anchor": "2000-01-01T00:00:00+00:00"}


def decoded(schedule: dict[str, Any] | None = None, **fields: Any) -> DeploymentSpec:
    request = _deployments.DeploymentRequest(
        name="dep",
        flow_name="etl",
        entrypoint="flows.py:etl",
        bundle_sha256="b" * 64,
        parameter_schema={"version": 1, "accepts_any": True, "parameters": []},
        schedules=(_deployments.ScheduleRequest(EVERY_5S, catch_up="all", **(schedule or {})),),
        **fields,
    )
    return spec_from_proto(_deployments.request_to_proto(request).spec)


def test_zero_runner_resumes_is_kept_and_unset_is_the_default() -> None:
    assert validate_spec(decoded(max_runner_resumes=0)).max_runner_resumes == 0
    assert validate_spec(decoded()).max_runner_resumes == 3


def test_zero_catch_up_runs_is_refused_and_unset_is_the_default() -> None:
    assert validate_spec(decoded()).schedules[0].max_catch_up_runs == 10
    with pytest.raises(ValidationError, match="max_runs must be between 1 and 1000, got 0"):
        validate_spec(decoded({"max_catch_up_runs": 0}))
