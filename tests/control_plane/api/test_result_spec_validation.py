"""The gRPC edge re-checks a step's result fields (StepSpec 18-20) whatever the SDK sent."""

from __future__ import annotations

import pytest

from control_plane.api.validation import validate_spec
from meridian.core.convert import spec_to_proto
from meridian.core.errors import ValidationError
from meridian.core.spec import StepSpec

BASE = StepSpec(name="load", module="flows.etl", function="load")


def _checked(**fields: object) -> StepSpec:
    proto = spec_to_proto(BASE)
    for name, value in fields.items():
        setattr(proto, name, value)
    return validate_spec(proto, "step 'load#1'")


def test_the_result_fields_round_trip_the_wire_and_pass() -> None:
    spec = _checked(result_store="s3-main", inline_threshold_bytes=4 * 1024 * 1024,
                    serializer="pickle")  # fmt: skip
    assert (spec.result_store, spec.inline_threshold_bytes, spec.serializer) == (
        "s3-main", 4 * 1024 * 1024, "pickle",
    )  # fmt: skip
    default = _checked()
    assert (default.result_store, default.inline_threshold_bytes, default.serializer) == ("", 0, "")


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"result_store": "S3_Main"}, "result_store: store 'S3_Main'"),
        ({"result_store": "a" * 10_000}, "result_store"),
        ({"result_store": "../etc"}, "result_store"),
        ({"inline_threshold_bytes": 4 * 1024 * 1024 + 1}, "inline_threshold_bytes must be"),
        ({"serializer": "yaml"}, "serializer 'yaml' must be"),
        ({"serializer": "PICKLE"}, "serializer"),
    ],
)
def test_bad_result_fields_are_refused_naming_the_step(
    fields: dict[str, object], match: str
) -> None:
    with pytest.raises(ValidationError, match=match) as info:
        _checked(**fields)
    assert str(info.value).startswith("step 'load#1': ")
    assert len(str(info.value)) < 300  # a huge name is not echoed back
