"""Flow parameters checked against the flow's signature: from ``-p key=value`` text, or from
already-decoded JSON (what a deployment stores and a trigger sends).

Annotations decide the conversion: ``int``, ``float``, ``bool``, ``str``, ``list``/``dict``
(and their parametrised forms, given as JSON), ``X | None`` / ``Optional[X]`` (``none`` or
``null`` gives None), ``Any``. Unannotated parameters take JSON when the text parses as JSON
and the text itself otherwise. Every failure is a ``ValidationError`` naming the parameter.

The richer types (:func:`coerce_params`, :func:`validate_params`, :func:`encode_params`) add:

* ``datetime``: ISO 8601 **with** an offset or ``Z`` (``2026-03-01T09:00:00+01:00``). A
  time without a zone is refused rather than guessed: the runner, the control plane and the
  person triggering may all be in different zones.
* ``date``: ``2026-03-01``.
* ``Enum`` subclasses: a member's name, else its value (``Colour.RED`` from ``RED`` or ``1``).
* ``pathlib`` paths: from a non-empty string (never checked against a file system: the flow
  may run on another machine).
* pydantic models, only when pydantic is already imported by the flow's module (this module
  never imports it): from a JSON object.

:func:`parse_params` (``meridian run``) applies the same rules as a deploy's ``-p`` and
returns their JSON form (what the run record stores). Whoever calls a flow body turns those
stored JSON values into the annotated types with :func:`call_arguments` (the rules of
:func:`validate_params`), so a body gets a ``datetime``, an ``Enum`` member or a validated
model however its run was started.
"""

from __future__ import annotations

import datetime as dt
import enum
import inspect
import json
import pathlib
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from meridian.core import resultref
from meridian.core.errors import ValidationError
from meridian.sdk._jsonvalues import describe_non_json
from meridian.sdk.refparams import stored_param

_TRUE = frozenset({"true", "1", "yes", "y", "on"})
_FALSE = frozenset({"false", "0", "no", "n", "off"})
_NONE = frozenset({"none", "null"})
MAX_PARAMS = 500
_MAX_SHOWN = 80
_MAX_MODEL_ERRORS = 3
_BASIC = "use int, float, bool, str, list or dict"
_RICH = "use int, float, bool, str, list, dict, datetime, date, an Enum, a Path or a pydantic model"


def split_assignments(items: Sequence[str]) -> dict[str, str]:
    """``["a=1", "b=x=y"]`` -> ``{"a": "1", "b": "x=y"}`` (the CLI's repeated ``-p``)."""
    result: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValidationError(f"parameter {item!r} must look like name=value")
        result[name.strip()] = value
    return result


def parse_params(fn: Callable[..., Any], raw: Mapping[str, Any]) -> dict[str, Any]:
    """Convert raw strings by ``fn``'s annotations (the richer types too) to their JSON form;
    check names and required ones.

    A value that is not a string is a stored result's marker (``-p NAME=@result:RUN/STEP``,
    resolved by the CLI): checked and kept as it is (``meridian.sdk.refparams``)."""
    return encode_params(_bind(fn, raw, _from_cli, cli=True))


def _from_cli(name: str, given: Any, hint: Any) -> Any:
    if isinstance(given, str):
        return convert(name, given, hint, rich=True)
    return stored_param(name, given, hint)


def call_arguments(fn: Callable[..., Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """The flow body's keyword arguments from its run's stored JSON parameters: each value
    converted to its annotation as :func:`validate_params` does (a pydantic model validated
    here, so a bad one fails the run at its start naming the parameter). A stored result's
    marker is checked and kept; the runner hands it to the body as a ``ResultRef``."""
    if not isinstance(values, Mapping):
        raise ValidationError(f"parameters must be a JSON object, got {type(values).__name__}")
    return _bind(fn, values, _from_stored, cli=False)


def _from_stored(name: str, value: Any, hint: Any) -> Any:
    if isinstance(value, dict) and resultref.REF_MARKER in value:
        return stored_param(name, value, hint)
    try:
        return _from_json(value, hint)
    except UnsupportedAnnotation:
        # Deploys refuse such annotations; a subflow child or a resumed local run may have
        # one: its body gets the JSON value, as it always did.
        return value
    except ValueError as exc:
        raise ValidationError(f"parameter {name!r}: {exc}") from None


def coerce_params(fn: Callable[..., Any], raw: Mapping[str, str]) -> dict[str, Any]:
    """Like :func:`parse_params`, also accepting the richer types (Python values, not JSON)."""
    return _bind(fn, raw, lambda name, text, hint: convert(name, text, hint, rich=True), cli=True)


def validate_params(fn: Callable[..., Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """Check decoded JSON parameters against ``fn``'s signature; return the values to call with.

    What a deploy checks its default parameters with and a trigger its parameters with:
    unknown and missing names are refused, each value must suit its annotation (an ``int``
    takes a JSON integer, a ``datetime`` an ISO 8601 string with an offset, ...).
    """
    if not isinstance(values, Mapping):
        raise ValidationError(f"parameters must be a JSON object, got {type(values).__name__}")
    return _bind(fn, values, _from_json_named, cli=False)


def encode_params(values: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON form of converted parameters (what a deployment stores); inverse of
    :func:`validate_params`."""
    encoded = {name: _encode(value) for name, value in values.items()}
    for name, value in encoded.items():
        problem = describe_non_json(value)
        if problem:
            raise ValidationError(f"parameter {name!r} cannot be stored as JSON: {problem}")
    return encoded


def _bind(
    fn: Callable[..., Any],
    given: Mapping[str, Any],
    convert_one: Callable[[str, Any, Any], Any],
    *,
    cli: bool,
) -> dict[str, Any]:
    if len(given) > MAX_PARAMS:
        raise ValidationError(f"at most {MAX_PARAMS} parameters, got {len(given)}")
    signature = inspect.signature(fn)
    hints = _type_hints(fn)
    params = signature.parameters
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    named = {n: p for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    values: dict[str, Any] = {}
    for name, given_value in given.items():
        if not isinstance(name, str) or (name not in named and not accepts_any):
            known = ", ".join(named) or "none"
            raise ValidationError(
                f"unknown parameter {str(name)[:_MAX_SHOWN]!r} (the flow takes: {known})"
            )
        values[name] = convert_one(name, given_value, hints.get(name, inspect.Parameter.empty))
    missing = [
        n
        for n, p in params.items()
        if p.default is p.empty
        and n not in values
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if missing:
        hint = " (" + " ".join(f"-p {n}=..." for n in missing) + ")" if cli else ""
        raise ValidationError(f"missing required parameter(s): {', '.join(missing)}{hint}")
    return values


def _type_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception:
        # An annotation that cannot be resolved (a name only imported under TYPE_CHECKING)
        # should not make the flow unusable: fall back to the raw annotations.
        return dict(getattr(fn, "__annotations__", {}))


def convert(name: str, text: str, annotation: Any, *, rich: bool = False) -> Any:
    """Convert one raw value for the parameter ``name`` annotated ``annotation``."""
    try:
        return _convert(text, annotation, rich)
    except ValueError as exc:
        raise ValidationError(f"parameter {name!r}: {exc}") from None


def _convert(text: str, annotation: Any, rich: bool) -> Any:
    if annotation in (inspect.Parameter.empty, Any, object) or isinstance(annotation, str):
        return _json_or_text(text)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return _convert_union(text, typing.get_args(annotation), rich)
    if annotation is bool:
        return _to_bool(text)
    if annotation is int:
        return _to_int(text)
    if annotation is float:
        return _to_float(text)
    if annotation is str:
        return text
    container = origin or annotation
    if container in (list, dict, tuple):
        return _to_json_of(text, container)
    if rich and _is_rich(annotation):
        if _is_model(annotation):
            return _to_model(annotation, text, from_text=True)
        return _rich_from_text(text, annotation)
    raise ValueError(f"unsupported annotation {annotation!r}; {_RICH if rich else _BASIC}")


def _convert_union(text: str, members: tuple[Any, ...], rich: bool) -> Any:
    concrete = [m for m in members if m is not type(None)]
    if len(concrete) < len(members) and text.strip().lower() in _NONE:
        return None
    errors = []
    for member in concrete:
        try:
            return _convert(text, member, rich)
        except ValueError as exc:
            errors.append(str(exc))
    raise ValueError("; ".join(errors))


def _json_or_text(text: str) -> Any:
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if describe_non_json(value) is None else text


def _to_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _to_int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"expected an integer, got {text!r}") from None


def _to_float(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"expected a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"expected a finite number, got {text!r}")
    return value


def _to_json_of(text: str, container: type) -> Any:
    expected = "a JSON object" if container is dict else "a JSON array"
    try:
        value = json.loads(text)
    except ValueError:
        raise ValueError(f"expected {expected}, got {text!r}") from None
    wanted = dict if container is dict else list
    if not isinstance(value, wanted):
        raise ValueError(f"expected {expected}, got {text!r}")
    return tuple(value) if container is tuple else value


# --- the richer types ---------------------------------------------------------------------


def _is_rich(annotation: Any) -> bool:
    if not isinstance(annotation, type):
        return False
    return issubclass(annotation, dt.date | enum.Enum | pathlib.PurePath) or _is_model(annotation)


def _is_model(annotation: Any) -> bool:
    # Only a module that imported pydantic can annotate with a model, so sys.modules says
    # whether it is there without this module ever importing it.
    pydantic = sys.modules.get("pydantic")
    base = getattr(pydantic, "BaseModel", None)
    return isinstance(annotation, type) and base is not None and issubclass(annotation, base)


def _rich_from_text(text: str, annotation: type) -> Any:
    """datetime, date, Enum or path from a string (the same for ``-p`` and for JSON)."""
    if issubclass(annotation, dt.datetime):
        return _to_datetime(text)
    if issubclass(annotation, dt.date):
        return _to_date(text)
    if issubclass(annotation, enum.Enum):
        return _to_enum(text, annotation)
    if not text or "\x00" in text:
        raise ValueError("expected a non-empty path")
    make_path: Callable[[str], Any] = annotation
    return make_path(text)


def _to_datetime(text: str) -> dt.datetime:
    example = "2026-03-01T09:00:00+01:00 or 2026-03-01T08:00:00Z"
    try:
        value = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"expected an ISO 8601 date and time like {example}, got {_shown(text)}"
        ) from None
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{_shown(text)} has no time zone; add an offset or Z, like {example}")
    return value


def _to_date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"expected a date like 2026-03-01, got {_shown(text)}") from None


def _to_enum(raw: Any, annotation: type[enum.Enum]) -> enum.Enum:
    members = list(annotation)
    if isinstance(raw, str) and raw in annotation.__members__:
        return annotation[raw]
    for member in members:
        value = member.value
        if (type(value) is type(raw) and value == raw) or (
            isinstance(raw, str) and not isinstance(value, str) and _json_equal(raw, value)
        ):
            return member
    names = ", ".join(m.name for m in members[:20])
    raise ValueError(f"expected one of {names} (a name or a value), got {_shown(raw)}")


def _json_equal(text: str, value: Any) -> bool:
    # ``-p colour=1`` for ``RED = 1``: the text is the value's JSON spelling.
    try:
        decoded = json.loads(text)
    except ValueError:
        return False
    return type(decoded) is type(value) and decoded == value


def _to_model(annotation: Any, raw: Any, *, from_text: bool) -> Any:
    try:
        decoded = json.loads(raw) if from_text else raw
    except ValueError:
        raise ValueError(
            f"expected a JSON object for {annotation.__name__}, got {_shown(raw)}"
        ) from None
    if not isinstance(decoded, dict):
        raise ValueError(f"expected a JSON object for {annotation.__name__}, got {_shown(raw)}")
    validate = getattr(annotation, "model_validate", None) or annotation.parse_obj
    try:
        return validate(decoded)
    except ValueError as exc:
        raise ValueError(f"not a valid {annotation.__name__}: {_model_errors(exc)}") from None


def _model_errors(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)[:300]
    parts = []
    found = errors()
    for error in found[:_MAX_MODEL_ERRORS]:
        where = ".".join(str(part) for part in error.get("loc", ())) or "(top level)"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    more = len(found) - _MAX_MODEL_ERRORS
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


# --- decoded JSON -------------------------------------------------------------------------


def _from_json_named(name: str, value: Any, annotation: Any) -> Any:
    try:
        return _from_json(value, annotation)
    except ValueError as exc:
        raise ValidationError(f"parameter {name!r}: {exc}") from None


def _from_json(value: Any, annotation: Any) -> Any:
    problem = describe_non_json(value)
    if problem:
        raise ValueError(f"not a JSON value ({problem})")
    if annotation in (inspect.Parameter.empty, Any, object) or isinstance(annotation, str):
        return value
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return _from_json_union(value, typing.get_args(annotation))
    if annotation is bool:
        return _expect(value, bool, "true or false")
    if annotation is int:
        if isinstance(value, bool):
            raise ValueError(f"expected an integer, got {_shown(value)}")
        return _expect(value, int, "an integer")
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {_shown(value)}")
        return float(value)
    if annotation is str:
        return _expect(value, str, "a string")
    container = origin or annotation
    if container in (list, tuple, dict):
        return _from_json_container(value, container, typing.get_args(annotation))
    if _is_model(annotation):
        return _to_model(annotation, value, from_text=False)
    if _is_rich(annotation):
        if issubclass(annotation, enum.Enum):
            return _to_enum(value, annotation)
        return _rich_from_text(_expect(value, str, "a string"), annotation)
    raise UnsupportedAnnotation(f"unsupported annotation {annotation!r}; {_RICH}")


class UnsupportedAnnotation(ValueError):
    """An annotation the parameter rules do not cover (``Literal``, ``set``, ...)."""


def _from_json_container(value: Any, container: type, args: tuple[Any, ...]) -> Any:
    # Items of ``list[X]`` and values of ``dict[str, X]`` convert too, as the parameter
    # schema checks them (``list[Colour]`` gives members); other forms stay as they are.
    if container is dict:
        data = _expect(value, dict, "a JSON object")
        if len(args) != 2:
            return data
        return {key: _from_json(item, args[1]) for key, item in data.items()}
    items = _expect(value, list, "a JSON array")
    if container is tuple:
        return tuple(items)
    return [_from_json(item, args[0]) for item in items] if len(args) == 1 else items


def _from_json_union(value: Any, members: tuple[Any, ...]) -> Any:
    if value is None and type(None) in members:
        return None
    errors = []
    for member in (m for m in members if m is not type(None)):
        try:
            return _from_json(value, member)
        except ValueError as exc:
            errors.append(str(exc))
    raise ValueError("; ".join(errors) or f"expected null, got {_shown(value)}")


def _expect(value: Any, kind: type, described: str) -> Any:
    if not isinstance(value, kind):
        raise ValueError(f"expected {described}, got {_shown(value)}")
    return value


def _encode(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, pathlib.PurePath):
        return str(value)
    if _is_model(type(value)):
        dump = getattr(value, "model_dump", None)  # pydantic 2; 1 only has .json()
        return dump(mode="json") if callable(dump) else json.loads(value.json())
    if isinstance(value, list | tuple):
        return [_encode(item) for item in value]
    if isinstance(value, dict):
        return {key: _encode(item) for key, item in value.items()}
    return value
