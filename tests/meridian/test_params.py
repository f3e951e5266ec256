"""Parsing `-p key=value` against a flow's signature."""

from __future__ import annotations

from typing import Any, Optional

import pytest

from meridian import ValidationError
from meridian.sdk.params import parse_params, split_assignments


def typed_flow(
    count: int,
    ratio: float = 1.0,
    dry_run: bool = False,
    name: str = "x",
    regions: list[str] | None = None,
    config: dict[str, Any] | None = None,
    limit: Optional[int] = None,  # noqa: UP045 - the old spelling must work too
    anything=None,  # unannotated on purpose
) -> None: ...


def test_typed_values_are_converted() -> None:
    raw = {
        "count": "3",
        "ratio": "0.5",
        "dry_run": "yes",
        "name": "42",
        "regions": '["eu", "us"]',
        "config": '{"a": 1}',
        "limit": "none",
    }
    assert parse_params(typed_flow, raw) == {
        "count": 3,
        "ratio": 0.5,
        "dry_run": True,
        "name": "42",
        "regions": ["eu", "us"],
        "config": {"a": 1},
        "limit": None,
    }
    assert parse_params(typed_flow, {"count": "1", "limit": "7"})["limit"] == 7


@pytest.mark.parametrize(
    ("text", "expected"),
    [("12", 12), ("[1, 2]", [1, 2]), ("hello", "hello"), ("true", True), ("NaN", "NaN")],
)
def test_unannotated_takes_json_else_text(text: str, expected: object) -> None:
    assert parse_params(typed_flow, {"count": "1", "anything": text})["anything"] == expected


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"count": "three"}, "parameter 'count': expected an integer"),
        ({"count": "1", "ratio": "inf"}, "parameter 'ratio': expected a finite number"),
        ({"count": "1", "dry_run": "maybe"}, "parameter 'dry_run': expected true or false"),
        ({"count": "1", "regions": '{"a": 1}'}, "parameter 'regions': expected a JSON array"),
        ({"count": "1", "config": "[1]"}, "parameter 'config': expected a JSON object"),
        ({"count": "1", "colour": "red"}, "unknown parameter 'colour'"),
        ({}, "missing required parameter(s): count (-p count=...)"),
    ],
)
def test_bad_parameters_are_refused_clearly(raw: dict[str, str], fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_params(typed_flow, raw)
    assert fragment in str(info.value)


def test_string_annotations_are_resolved() -> None:
    def flow_with_string_hints(n: "int", tags: "list[str]") -> None: ...  # noqa: UP037

    assert parse_params(flow_with_string_hints, {"n": "2", "tags": '["a"]'}) == {
        "n": 2,
        "tags": ["a"],
    }


def test_var_keyword_accepts_any_name() -> None:
    def open_flow(**extra: Any) -> None: ...

    assert parse_params(open_flow, {"x": "1", "y": "text"}) == {"x": 1, "y": "text"}


def test_split_assignments() -> None:
    assert split_assignments(["a=1", "b=x=y", "c="]) == {"a": "1", "b": "x=y", "c": ""}
    with pytest.raises(ValidationError, match="name=value"):
        split_assignments(["novalue"])
