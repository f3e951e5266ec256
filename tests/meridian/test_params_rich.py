"""Richer flow parameters (datetime, date, Enum, Path, pydantic models) and decoded-JSON
parameters checked against a flow's signature (what deploys and triggers will call)."""

from __future__ import annotations

import datetime as dt
import enum
import pathlib
import subprocess
import sys
from typing import Any, Literal

import pytest

from meridian import ValidationError
from meridian.sdk.params import (
    MAX_PARAMS,
    call_arguments,
    coerce_params,
    encode_params,
    parse_params,
    validate_params,
)

UTC = dt.UTC


class Colour(enum.Enum):
    RED = 1
    GREEN = "green"


class Size(enum.StrEnum):
    SMALL = "s"
    LARGE = "l"


def report(
    day: dt.date,
    since: dt.datetime,
    colour: Colour = Colour.RED,
    size: Size = Size.SMALL,
    out: pathlib.Path = pathlib.Path("out"),
    until: dt.datetime | None = None,
    count: int = 1,
    ratio: float = 1.0,
    tags: list[str] | None = None,
    extra: Any = None,
) -> None: ...


REQUIRED = {"day": "2026-03-01", "since": "2026-03-01T09:00:00+01:00"}
SINCE = dt.datetime(2026, 3, 1, 9, tzinfo=dt.timezone(dt.timedelta(hours=1)))


# --- from -p text ------------------------------------------------------------------------


def test_rich_values_from_text() -> None:
    raw = {
        **REQUIRED,
        "colour": "GREEN",
        "size": "l",
        "out": "/data/reports",
        "until": "2026-03-02T00:00:00Z",
    }
    assert coerce_params(report, raw) == {
        "day": dt.date(2026, 3, 1),
        "since": SINCE,
        "colour": Colour.GREEN,
        "size": Size.LARGE,
        "out": pathlib.Path("/data/reports"),
        "until": dt.datetime(2026, 3, 2, tzinfo=UTC),
    }


@pytest.mark.parametrize(
    ("text", "member"),
    [("RED", Colour.RED), ("1", Colour.RED), ("GREEN", Colour.GREEN), ("green", Colour.GREEN)],
)
def test_enum_by_name_or_value(text: str, member: Colour) -> None:
    assert coerce_params(report, {**REQUIRED, "colour": text})["colour"] is member


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (
            {"since": "2026-03-01T09:00:00"},
            "parameter 'since': '2026-03-01T09:00:00' has no time zone",
        ),
        ({"since": "yesterday"}, "parameter 'since': expected an ISO 8601 date and time"),
        ({"day": "01/03/2026"}, "parameter 'day': expected a date like 2026-03-01"),
        ({"colour": "BLUE"}, "parameter 'colour': expected one of RED, GREEN (a name or a value)"),
        ({"colour": "2"}, "parameter 'colour': expected one of RED, GREEN"),
        ({"out": ""}, "parameter 'out': expected a non-empty path"),
        ({"until": "soon"}, "parameter 'until': expected an ISO 8601 date and time"),
    ],
)
def test_bad_rich_text_is_refused_naming_the_parameter(raw: dict[str, str], fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        coerce_params(report, {**REQUIRED, **raw})
    assert fragment in str(info.value)


def test_optional_rich_values_take_none() -> None:
    assert coerce_params(report, {**REQUIRED, "until": "null"})["until"] is None


def test_parse_params_takes_the_rich_types_and_returns_their_json() -> None:
    # meridian run: the rules of a deploy's -p, in the form the run record stores.
    assert parse_params(report, {**REQUIRED, "colour": "1", "out": "x/y"}) == {
        "day": "2026-03-01",
        "since": "2026-03-01T09:00:00+01:00",
        "colour": "RED",
        "out": "x/y",
    }
    with pytest.raises(ValidationError, match=r"parameter 'since': .* has no time zone"):
        parse_params(report, {**REQUIRED, "since": "2026-03-01T09:00:00"})

    def basic(count: int, tags: list[str] | None = None) -> None: ...

    assert parse_params(basic, {"count": "2", "tags": '["a"]'}) == {"count": 2, "tags": ["a"]}
    assert coerce_params(basic, {"count": "2"}) == parse_params(basic, {"count": "2"})


def test_unsupported_annotations_say_what_is_supported() -> None:
    def odd(x: complex) -> None: ...

    with pytest.raises(ValidationError, match="use int, float, bool, str, list, dict, datetime"):
        coerce_params(odd, {"x": "1"})


# --- from decoded JSON (deploy and trigger) ----------------------------------------------


def test_validate_params_converts_json_values() -> None:
    values = {
        "day": "2026-03-01",
        "since": "2026-03-01T09:00:00+01:00",
        "colour": 1,
        "size": "LARGE",
        "out": "reports",
        "until": None,
        "count": 3,
        "ratio": 2,
        "tags": ["a", "b"],
        "extra": {"free": [1, "form"]},
    }
    assert validate_params(report, values) == {
        "day": dt.date(2026, 3, 1),
        "since": SINCE,
        "colour": Colour.RED,
        "size": Size.LARGE,
        "out": pathlib.Path("reports"),
        "until": None,
        "count": 3,
        "ratio": 2.0,
        "tags": ["a", "b"],
        "extra": {"free": [1, "form"]},
    }


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"count": "3"}, "parameter 'count': expected an integer, got '3'"),
        ({"count": True}, "parameter 'count': expected an integer, got True"),
        ({"count": 1.5}, "parameter 'count': expected an integer, got 1.5"),
        ({"ratio": "1.0"}, "parameter 'ratio': expected a number"),
        ({"tags": "a,b"}, "parameter 'tags': expected a JSON array"),
        ({"since": 1767225600}, "parameter 'since': expected a string, got 1767225600"),
        ({"since": "2026-03-01T09:00:00"}, "has no time zone"),
        ({"colour": True}, "parameter 'colour': expected one of RED, GREEN"),
        ({"out": 5}, "parameter 'out': expected a string"),
        ({"extra": float("nan")}, "parameter 'extra': not a JSON value"),
        ({"colour_": 1}, "unknown parameter 'colour_' (the flow takes: day, since, colour"),
    ],
)
def test_bad_json_values_are_refused_naming_the_parameter(
    values: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(ValidationError) as info:
        validate_params(report, {**REQUIRED, **values})
    assert fragment in str(info.value)


def test_missing_json_parameters_are_named_without_cli_flags() -> None:
    with pytest.raises(ValidationError) as info:
        validate_params(report, {"day": "2026-03-01"})
    assert str(info.value) == "missing required parameter(s): since"


def test_the_parameters_themselves_must_be_a_bounded_object() -> None:
    with pytest.raises(ValidationError, match="must be a JSON object, got list"):
        validate_params(report, [1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=f"at most {MAX_PARAMS} parameters"):
        validate_params(report, {f"p{i}": i for i in range(MAX_PARAMS + 1)})


def test_encoded_parameters_validate_back_to_the_same_values() -> None:
    raw = {**REQUIRED, "colour": "1", "size": "l", "out": "x/y", "until": "2026-03-02T00:00Z"}
    values = coerce_params(report, raw)
    stored = encode_params(values)
    assert stored == {
        "day": "2026-03-01",
        "since": "2026-03-01T09:00:00+01:00",
        "colour": "RED",
        "size": "LARGE",
        "out": "x/y",
        "until": "2026-03-02T00:00:00+00:00",
    }
    assert validate_params(report, stored) == values


def test_encode_refuses_what_json_cannot_store() -> None:
    with pytest.raises(ValidationError, match="parameter 'x' cannot be stored as JSON: set"):
        encode_params({"x": {1, 2}})


# --- the body's arguments from the run's stored JSON ----------------------------------------


def test_call_arguments_give_the_body_its_declared_types() -> None:
    def body(day: dt.date, colours: list[Colour], by_name: dict[str, Size], data: Any = None): ...

    stored = {"day": "2026-03-01", "colours": ["GREEN", 1], "by_name": {"a": "l"}}
    assert call_arguments(body, stored) == {
        "day": dt.date(2026, 3, 1),
        "colours": [Colour.GREEN, Colour.RED],
        "by_name": {"a": Size.LARGE},
    }
    with pytest.raises(ValidationError, match="parameter 'colours': expected one of RED"):
        call_arguments(body, {**stored, "colours": ["BLUE"]})


# --- pydantic, only when the flow's module has it ----------------------------------------


def test_pydantic_models_from_text_and_json() -> None:
    pydantic = pytest.importorskip("pydantic")

    class Window(pydantic.BaseModel):  # type: ignore[misc,name-defined]
        start: dt.date
        days: int = 1

    def backfill(window: Window) -> None: ...

    backfill.__annotations__["window"] = Window  # resolved here, not via the module globals
    from_text = coerce_params(backfill, {"window": '{"start": "2026-03-01", "days": 3}'})
    assert from_text == {"window": Window(start=dt.date(2026, 3, 1), days=3)}
    from_json = validate_params(backfill, {"window": {"start": "2026-03-01", "days": 3}})
    assert from_json == from_text
    assert encode_params(from_json) == {"window": {"start": "2026-03-01", "days": 3}}

    with pytest.raises(ValidationError) as info:
        validate_params(backfill, {"window": {"start": "March", "days": "x"}})
    message = str(info.value)
    assert message.startswith("parameter 'window': not a valid Window: start: ")
    assert "days: " in message
    with pytest.raises(ValidationError, match="expected a JSON object for Window"):
        coerce_params(backfill, {"window": "[1]"})


def test_params_never_import_pydantic() -> None:
    code = (
        "import sys, datetime\n"
        "from meridian.sdk.params import coerce_params, validate_params\n"
        "def f(when: datetime.date, n: int = 1): ...\n"
        "coerce_params(f, {'when': '2026-01-01'})\n"
        "validate_params(f, {'when': '2026-01-01', 'n': 2})\n"
        "print('pydantic' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"


def _child(mode: Literal["a", "b"], seen: set[int], n: int) -> None: ...


def test_a_stored_parameter_of_an_unsupported_annotation_reaches_the_body_as_json() -> None:
    # A subflow child or a resumed local run: deploys refuse these annotations, a body that
    # ran before with its JSON values must still start.
    assert call_arguments(_child, {"mode": "a", "seen": [1], "n": 2}) == {
        "mode": "a",
        "seen": [1],
        "n": 2,
    }
    with pytest.raises(ValidationError, match="parameter 'n'"):
        call_arguments(_child, {"mode": "a", "seen": [1], "n": "two"})
