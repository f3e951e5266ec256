"""Reference markers in step inputs: exactly one key, found at any depth, replaced in place."""

from __future__ import annotations

import json
from typing import Any

import pytest

from meridian.core.errors import ValidationError
from meridian.core.resultref import (
    MAX_MARKER_DEPTH,
    REF_MARKER,
    ResultRef,
    find_ref_markers,
    marker_ref,
    ref_marker,
    replace_ref_markers,
    store_name_problem,
)


def _ref(digest: str = "ab", **changes: Any) -> ResultRef:
    fields: dict[str, Any] = {
        "environment": "aws-prod",
        "store": "s3-main",
        "uri": f"s3://bucket/runs/r1/{digest}/result",
        "size": 1234,
        "sha256": digest * 32,
        "serializer": "json",
        "sealed": False,
    }
    fields.update(changes)
    return ResultRef(**fields)


def test_a_marker_is_the_reference_under_one_key_and_survives_json() -> None:
    ref = _ref()
    marker = ref_marker(ref)
    assert list(marker) == [REF_MARKER] == ["$meridian_ref"]
    assert marker_ref(json.loads(json.dumps(marker))) == ref


def test_plain_values_are_not_markers() -> None:
    for value in (None, 1, "x", [1], {"a": 1}, {"$meridian": 1}):
        assert marker_ref(value) is None


def test_a_marker_with_other_keys_is_refused_not_taken_for_data() -> None:
    half = {**ref_marker(_ref()), "extra": 1}
    with pytest.raises(ValidationError, match=r"exactly .*also has the keys \['extra'\]"):
        marker_ref(half)
    with pytest.raises(ValidationError, match="exactly"):
        find_ref_markers({"args": [[half]]})


def test_a_marker_holding_a_bad_reference_is_refused() -> None:
    value = _ref().to_value()
    value["sha256"] = "XYZ"
    with pytest.raises(ValidationError, match="sha256"):
        find_ref_markers({"args": [{REF_MARKER: value}]})
    with pytest.raises(ValidationError, match="JSON object"):
        marker_ref({REF_MARKER: "s3://bucket/x"})


def test_markers_are_found_at_any_depth_each_distinct_one_once_in_order() -> None:
    first, second = _ref("aa"), _ref("bb")
    inputs = {
        "args": [ref_marker(first), [1, {"deep": [ref_marker(second)]}]],
        "kwargs": {"again": ref_marker(first), "t": (ref_marker(second),)},
    }
    assert find_ref_markers(inputs) == [first, second]
    assert find_ref_markers({"args": [], "kwargs": {}}) == []


def test_nesting_deeper_than_the_bound_is_refused() -> None:
    value: Any = ref_marker(_ref())
    for _ in range(MAX_MARKER_DEPTH + 1):
        value = [value]
    with pytest.raises(ValidationError, match="deeper"):
        find_ref_markers(value)
    with pytest.raises(ValidationError, match="deeper"):
        replace_ref_markers(value, lambda ref: 0)


def test_replacing_markers_loads_each_and_leaves_the_rest_untouched() -> None:
    first, second = _ref("aa"), _ref("bb")
    untouched = {"plain": [1, 2]}
    value = [ref_marker(first), {"x": ref_marker(second), "keep": untouched}, untouched]
    replaced = replace_ref_markers(value, lambda ref: f"loaded {ref.sha256[:2]}")
    assert replaced == ["loaded aa", {"x": "loaded bb", "keep": untouched}, untouched]
    assert replaced[2] is untouched  # a container without a marker is not copied
    assert replace_ref_markers(untouched, lambda ref: 0) is untouched


def test_store_names_follow_the_agent_config_syntax() -> None:
    assert store_name_problem("s3-main") is None
    assert store_name_problem("a") is None
    for bad in ("", "S3", "-x", "x-", "a" * 64, "a.b", 3):
        assert store_name_problem(bad) is not None, bad
