"""Flow parameters that are stored results: a marker binds only to a parameter that may hold a
``ResultRef``, and the body receives a ``meridian.ResultRef`` in its place."""

from __future__ import annotations

from typing import Any

import pytest

import meridian
from meridian.core.errors import ValidationError
from meridian.core.resultref import REF_MARKER, ResultRef, ref_marker
from meridian.sdk.params import call_arguments, parse_params
from meridian.sdk.refparams import with_result_refs

REF = ResultRef(
    "aws-prod", "scratch", "file:///results/runs/r/extract/result", 5002, "ab" * 32, "json"
)
MARKER = ref_marker(REF)


def takes_ref(data: meridian.ResultRef, n: int = 1) -> None: ...


def takes_anything(data, n: int = 1) -> None: ...  # type: ignore[no-untyped-def]


def takes_optional(data: meridian.ResultRef | None = None) -> None: ...


def takes_core_ref(data: ResultRef) -> None: ...


def takes_int(data: int) -> None: ...


@pytest.mark.parametrize("fn", [takes_ref, takes_anything, takes_optional, takes_core_ref])
def test_a_marker_binds_to_a_parameter_that_may_hold_a_reference(fn: Any) -> None:
    assert parse_params(fn, {"data": MARKER}) == {"data": MARKER}


def test_text_values_are_converted_next_to_a_marker() -> None:
    assert parse_params(takes_ref, {"data": MARKER, "n": "7"}) == {"data": MARKER, "n": 7}


def test_a_marker_for_a_parameter_of_another_type_is_refused() -> None:
    with pytest.raises(ValidationError, match="parameter 'data' is annotated int") as caught:
        parse_params(takes_int, {"data": MARKER})
    assert "annotate it ResultRef" in str(caught.value)


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ({REF_MARKER: REF.to_value(), "extra": 1}, "reserved for references"),
        ({REF_MARKER: {**REF.to_value(), "size": -1}}, "invalid result reference"),
        ({"rows": 3}, "expected text or a stored result's marker"),
        (3, "expected text or a stored result's marker"),
    ],
)
def test_a_value_that_is_neither_text_nor_a_marker_is_refused(value: Any, says: str) -> None:
    with pytest.raises(ValidationError, match="parameter 'data'") as caught:
        parse_params(takes_anything, {"data": value})
    assert says in str(caught.value)


def test_the_body_receives_a_result_ref_wherever_the_marker_is() -> None:
    plain = {"rows": [1, 2]}
    args = with_result_refs({"data": MARKER, "nested": {"parts": [MARKER]}, "plain": plain})
    data, nested = args["data"], args["nested"]["parts"][0]
    assert isinstance(data, meridian.ResultRef) and isinstance(nested, meridian.ResultRef)
    assert data.to_value() == REF.to_value() and nested == data
    assert args["plain"] is plain  # values without a marker are not copied


def test_a_parameter_reference_is_passed_to_steps_not_downloaded_in_the_body() -> None:
    data = with_result_refs({"data": MARKER})["data"]
    with pytest.raises(ValidationError, match="pass it to a step instead"):
        data.load()


def test_a_malformed_marker_in_stored_parameters_fails_the_body() -> None:
    with pytest.raises(ValidationError, match="reserved for references"):
        with_result_refs({"data": {REF_MARKER: REF.to_value(), "extra": 1}})


def test_the_body_arguments_keep_the_marker_for_the_runner_to_wrap() -> None:
    assert call_arguments(takes_ref, {"data": MARKER, "n": 2}) == {"data": MARKER, "n": 2}
    assert call_arguments(takes_anything, {"data": MARKER}) == {"data": MARKER}
    with pytest.raises(ValidationError, match="annotate it ResultRef"):
        call_arguments(_takes_int, {"data": MARKER})


def _takes_int(data: int) -> None: ...
