"""The one nesting bound of parameter values, checked without recursion."""

from __future__ import annotations

import json

import pytest

from meridian.core import jsondepth, paramschema
from meridian.core.errors import ValidationError
from meridian.core.resultref import MAX_MARKER_DEPTH, find_ref_markers


def nested(levels: int) -> str:
    return "[" * levels + "]" * levels


def test_the_bound_is_the_one_a_run_start_applies() -> None:
    assert jsondepth.MAX_DEPTH == MAX_MARKER_DEPTH
    at_bound = json.loads(nested(MAX_MARKER_DEPTH + 1))
    find_ref_markers(at_bound)  # what the run start walks: accepted
    assert not jsondepth.depth_above(at_bound)
    above = [at_bound]
    with pytest.raises(ValidationError):
        find_ref_markers([above])
    assert jsondepth.depth_above([above])


@pytest.mark.parametrize("levels", [900, 5000, 100_000])
def test_loads_refuses_deep_text_whatever_the_parser_can_take(levels: int) -> None:
    with pytest.raises(ValidationError, match="the body is nested deeper than 200 levels"):
        jsondepth.loads('{"tag": ' + nested(levels) + "}", "the body")
    with pytest.raises(ValueError):
        jsondepth.loads("{not json", "the body")


def test_parameters_are_checked_from_text_and_as_values() -> None:
    schema = {"version": 1, "accepts_any": True, "parameters": []}
    with pytest.raises(ValidationError, match="parameter 'blob': value is nested deeper"):
        paramschema.from_text(schema, {"blob": nested(3000)})
    with pytest.raises(ValidationError, match="parameter 'blob' is nested deeper than 200"):
        paramschema.from_text(schema, {"blob": nested(900)})
    with pytest.raises(ValidationError, match="parameter 'blob' is nested deeper than 200"):
        paramschema.validate(schema, {"blob": json.loads(nested(900))})
    assert paramschema.validate(schema, {"blob": [[1]]}) == {"blob": [[1]]}
