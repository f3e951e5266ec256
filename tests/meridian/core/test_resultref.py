"""ResultRef: strict JSON round trip, bounds, and the inline-or-reference decision."""

from __future__ import annotations

import json
from typing import Any

import pytest

from meridian.core.errors import ValidationError
from meridian.core.resultref import (
    INLINE_THRESHOLD_BYTES,
    MAX_INLINE_THRESHOLD_BYTES,
    MAX_REF_JSON_LENGTH,
    MAX_RESULT_BYTES,
    ResultRef,
    placement,
)

DIGEST = "ab" * 32


def _ref(**changes: Any) -> ResultRef:
    fields: dict[str, Any] = {
        "environment": "aws-prod",
        "store": "s3-main",
        "uri": "s3://bucket/runs/r1/extract/1/result",
        "size": 300_000_000,
        "sha256": DIGEST,
        "serializer": "parquet",
        "sealed": False,
    }
    fields.update(changes)
    return ResultRef(**fields)


def test_round_trip_through_json() -> None:
    ref = _ref(sealed=True)
    text = ref.to_json()
    assert json.loads(text)["v"] == 1
    assert ResultRef.from_json(text) == ref
    assert ResultRef.from_json(text.encode()) == ref


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"environment": "bad env"}, "environment"),
        ({"environment": ""}, "environment"),
        ({"store": "Upper"}, "store"),
        ({"store": "x" * 64}, "store"),
        ({"uri": "ftp://host/x"}, "uri must start"),
        ({"uri": "s3://b/" + "k" * 2048}, "longer than"),
        ({"uri": "s3://b/a b"}, "whitespace"),
        ({"uri": "s3://b/a\nb"}, "whitespace"),
        ({"size": -1}, "size"),
        ({"size": MAX_RESULT_BYTES + 1}, "size"),
        ({"size": True}, "size"),
        ({"sha256": "AB" * 32}, "sha256"),
        ({"sha256": "ab" * 31}, "sha256"),
        ({"serializer": "Pickle!"}, "serializer"),
        ({"sealed": 1}, "sealed"),
    ],
)
def test_invalid_fields_are_refused(changes: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        _ref(**changes)


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda v: v.pop("sha256"), "missing fields \\['sha256'\\]"),
        (lambda v: v.update(extra=1), "unknown fields \\['extra'\\]"),
        (lambda v: v.update(v=2), "version"),
        (lambda v: v.update(v=True), "version"),
        (lambda v: v.update(size="10"), "size must be an integer"),
        (lambda v: v.update(size=1.0), "size must be an integer"),
        (lambda v: v.update(sealed="false"), "sealed"),
        (lambda v: v.update(store=None), "store must be a string"),
    ],
)
def test_strict_json_validation(mutate: Any, problem: str) -> None:
    value = _ref().to_value()
    mutate(value)
    with pytest.raises(ValidationError, match=problem):
        ResultRef.from_json(json.dumps(value))


def test_from_json_bounds_and_syntax() -> None:
    with pytest.raises(ValidationError, match="longer than"):
        ResultRef.from_json(" " * (MAX_REF_JSON_LENGTH + 1))
    with pytest.raises(ValidationError, match="not JSON"):
        ResultRef.from_json("{")
    with pytest.raises(ValidationError, match="JSON object"):
        ResultRef.from_json("[]")


def test_placement_threshold() -> None:
    assert INLINE_THRESHOLD_BYTES == 256 * 1024
    assert placement(0) == "inline"
    assert placement(INLINE_THRESHOLD_BYTES - 1) == "inline"
    assert placement(INLINE_THRESHOLD_BYTES) == "reference"
    assert placement(10, threshold=10) == "reference"
    assert placement(9, threshold=10) == "inline"
    assert placement(1, store_requested=True) == "reference"
    assert placement(5, threshold=0) == "reference"


@pytest.mark.parametrize("threshold", [-1, MAX_INLINE_THRESHOLD_BYTES + 1, 1.5, True])
def test_placement_refuses_bad_thresholds(threshold: Any) -> None:
    with pytest.raises(ValidationError, match="inline threshold"):
        placement(1, threshold=threshold)


def test_placement_refuses_bad_sizes() -> None:
    with pytest.raises(ValidationError, match="result size"):
        placement(-1)
