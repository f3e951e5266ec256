"""The parameter schema: extracted from a flow's signature, then used without its code to check
JSON values the way meridian/sdk/params.py converts them when the run starts."""

from __future__ import annotations

import datetime as dt
import enum
import json
import pathlib
from typing import Any

import pytest

from meridian.core import paramschema
from meridian.core.errors import ValidationError
from meridian.sdk.params import validate_params


class Colour(enum.Enum):
    RED = 1
    GREEN = "g"


def flow(
    day: dt.date,
    at: dt.datetime,
    colour: Colour,
    out: pathlib.Path,
    n: int = 3,
    ratio: float = 0.5,
    dry: bool = False,
    label: str | None = None,
    ids: list[int] | None = None,
    extra: dict[str, float] | None = None,
    anything=None,  # type: ignore[no-untyped-def]  # unannotated: any JSON value
    when: dt.date = dt.date(2026, 1, 2),
) -> None: ...


def schema() -> dict[str, Any]:
    return paramschema.schema_from_function(flow)


GOOD = {
    "day": "2026-03-01",
    "at": "2026-03-01T09:00:00+01:00",
    "colour": "RED",
    "out": "/data/out",
}


def test_the_schema_names_every_kind_and_json_default() -> None:
    found = {e["name"]: e for e in schema()["parameters"]}
    kinds = {name: e["type"]["kind"] for name, e in found.items()}
    assert kinds == {
        "day": "date",
        "at": "datetime",
        "colour": "enum",
        "out": "path",
        "n": "int",
        "ratio": "float",
        "dry": "bool",
        "label": "optional",
        "ids": "optional",
        "extra": "optional",
        "anything": "any",
        "when": "date",
    }
    assert found["colour"]["type"]["members"] == [
        {"name": "RED", "value": 1},
        {"name": "GREEN", "value": "g"},
    ]
    assert found["n"] == {"name": "n", "type": {"kind": "int"}, "required": False, "default": 3}
    assert found["when"]["default"] == "2026-01-02"
    assert found["day"]["required"] and "default" not in found["day"]
    assert json.loads(json.dumps(schema())) == schema()  # stored as JSON as it is
    assert "colour: Colour(RED, GREEN) (required)" in paramschema.describe(schema())


def test_good_values_are_accepted_and_normalized() -> None:
    values = {**GOOD, "colour": 1, "ratio": 2, "ids": [1, 2], "extra": {"a": 1}, "label": None}
    checked = paramschema.validate(schema(), values)
    assert checked["colour"] == "RED"  # by value, normalized to the name
    assert checked["ratio"] == 2.0 and isinstance(checked["ratio"], float)
    assert checked["extra"] == {"a": 1.0}
    # What the schema accepts, the runner's own conversion accepts too.
    converted = validate_params(flow, checked)
    assert converted["colour"] is Colour.RED
    assert converted["at"] == dt.datetime(2026, 3, 1, 8, tzinfo=dt.UTC)
    assert converted["out"] == pathlib.Path("/data/out")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"day": "01/03/2026"}, "parameter 'day': expected a date like 2026-03-01"),
        ({"at": "2026-03-01T09:00:00"}, "parameter 'at': .* has no time zone"),
        ({"at": 5}, "parameter 'at': expected a string"),
        ({"colour": "BLUE"}, "parameter 'colour': expected one of RED, GREEN"),
        ({"out": ""}, "parameter 'out': expected a non-empty path"),
        ({"n": True}, "parameter 'n': expected an integer"),
        ({"n": 1.5}, "parameter 'n': expected an integer"),
        ({"ratio": "x"}, "parameter 'ratio': expected a number"),
        ({"dry": "yes"}, "parameter 'dry': expected true or false"),
        ({"ids": [1, "x"]}, "parameter 'ids': expected an integer"),
        ({"extra": [1]}, "parameter 'extra': expected a JSON object"),
        ({"nope": 1}, "unknown parameter 'nope' \\(the flow takes: day, at"),
    ],
)
def test_bad_values_name_the_parameter(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        paramschema.validate(schema(), {**GOOD, **change})


def test_missing_required_parameters_are_listed() -> None:
    with pytest.raises(ValidationError, match="missing required parameter\\(s\\): day, at"):
        paramschema.validate(schema(), {"colour": "RED", "out": "x"})


def test_kwargs_accept_any_name_and_unsupported_annotations_are_refused() -> None:
    def open_flow(a: int, **rest: Any) -> None: ...

    def odd(a: complex) -> None: ...

    open_schema = paramschema.schema_from_function(open_flow)
    assert paramschema.validate(open_schema, {"a": 1, "b": [1]}) == {"a": 1, "b": [1]}
    with pytest.raises(ValidationError, match="parameter 'a': unsupported annotation complex"):
        paramschema.schema_from_function(odd)


def test_a_malformed_schema_is_refused() -> None:
    bad: Any
    for bad in (
        [],
        {"version": 2, "parameters": []},
        {"version": 1, "parameters": [{"name": "x y", "required": True, "type": {"kind": "int"}}]},
        {"version": 1, "parameters": [{"name": "x", "required": True, "type": {"kind": "blob"}}]},
    ):
        with pytest.raises(ValidationError):
            paramschema.check_schema(bad)


def test_pydantic_models_keep_their_json_schema() -> None:
    pydantic = pytest.importorskip("pydantic")

    class Window(pydantic.BaseModel):  # type: ignore[misc,name-defined]
        start: int
        end: int = 10

    def model_flow(window: Window) -> None: ...

    # Resolved against this function's locals: annotations are strings here.
    model_flow.__annotations__["window"] = Window
    found = paramschema.schema_from_function(model_flow)
    kind = found["parameters"][0]["type"]
    assert kind["kind"] == "pydantic" and kind["json_schema"]["required"] == ["start"]
    assert paramschema.validate(found, {"window": {"start": 1}}) == {"window": {"start": 1}}
    with pytest.raises(ValidationError, match=r"parameter 'window': .*missing field\(s\) start"):
        paramschema.validate(found, {"window": {"end": 1}})
    with pytest.raises(ValidationError, match="expected a JSON object for Window"):
        paramschema.validate(found, {"window": [1]})
