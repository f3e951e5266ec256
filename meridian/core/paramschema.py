"""A flow's parameters as a JSON schema, and JSON values checked against it without its code.

``meridian deploy`` extracts the schema from the flow function's signature
(:func:`schema_from_function`); the control plane stores it with the deployment version and
checks every trigger's parameters with :func:`validate` — it never imports user code. The
rules are those of ``meridian/sdk/params.py`` (what the runner applies when it calls the
flow), so a value accepted here is accepted there:

* ``int`` (a JSON integer, not a boolean), ``float`` (any JSON number; stored as a float),
  ``bool``, ``str``, ``list``/``tuple`` and ``dict`` (their items checked when parametrised:
  ``list[int]``, ``dict[str, float]``), ``Any`` / unannotated (any JSON value);
* ``datetime``: an ISO 8601 string **with** an offset or ``Z``; ``date``: ``2026-03-01``;
* ``Enum``: a member's name, else its value (normalized to the name);
* ``Path``: a non-empty string (never checked against a file system);
* pydantic models: a JSON object; the model's JSON schema is kept for people and its
  ``required`` fields are checked here, the rest by the model itself when the run starts;
* ``X | None`` (``optional``) and other unions (``union``), tried member by member.

Schema document::

    {"version": 1, "accepts_any": false,
     "parameters": [{"name": "day", "type": {"kind": "date"}, "required": true},
                    {"name": "n", "type": {"kind": "int"}, "required": false, "default": 3}]}

A default that has no JSON form is recorded as ``"required": false`` without ``"default"``
(the function's own default applies when the run starts). Every error names the parameter.
"""

from __future__ import annotations

import datetime as dt
import enum
import inspect
import json
import math
import pathlib
import sys
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from meridian.core.errors import ValidationError
from meridian.core.jsondepth import MAX_DEPTH, check_depth

SCHEMA_VERSION = 1
MAX_PARAMS = 500
MAX_SCHEMA_BYTES = 256 * 1024
MAX_ENUM_MEMBERS = 1000
_MAX_SHOWN = 80
_MAX_DEPTH = 8
_SIMPLE = {int: "int", float: "float", bool: "bool", str: "str"}
_KINDS = frozenset(
    {"int", "float", "bool", "str", "any", "list", "dict", "datetime", "date", "path"}
    | {"enum", "pydantic", "optional", "union"}
)
_SUPPORTED = (
    "use int, float, bool, str, list, dict, datetime, date, an Enum, a Path or a pydantic model"
)


# ---- extraction (deploy time, in the CLI that imported the flow) --------------------------


def schema_from_function(fn: Callable[..., Any]) -> dict[str, Any]:
    """The parameter schema of ``fn`` (a flow's function), or a ValidationError naming the
    parameter whose annotation cannot be represented."""
    signature = inspect.signature(fn)
    hints = _type_hints(fn)
    parameters: list[dict[str, Any]] = []
    accepts_any = False
    for name, param in signature.parameters.items():
        if param.kind is param.VAR_KEYWORD:
            accepts_any = True
            continue
        if param.kind is param.VAR_POSITIONAL:
            continue
        annotation = hints.get(name, inspect.Parameter.empty)
        try:
            entry: dict[str, Any] = {"name": name, "type": _describe(annotation, 0)}
        except ValueError as exc:
            raise ValidationError(f"parameter {name!r}: {exc}") from None
        entry["required"] = param.default is param.empty
        if param.default is not param.empty:
            encoded = _encode_default(param.default)
            if encoded is not _NO_JSON:
                entry["default"] = encoded
        parameters.append(entry)
    schema = {"version": SCHEMA_VERSION, "accepts_any": accepts_any, "parameters": parameters}
    check_schema(schema)
    return schema


def _type_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception:
        # As params.py: an unresolvable annotation (TYPE_CHECKING import) is taken as written.
        return dict(getattr(fn, "__annotations__", {}))


def _describe(annotation: Any, depth: int) -> dict[str, Any]:
    if depth > _MAX_DEPTH:
        raise ValueError("annotation nested too deeply")
    if annotation in (inspect.Parameter.empty, Any, object) or isinstance(annotation, str):
        return {"kind": "any"}
    if annotation in _SIMPLE:
        return {"kind": _SIMPLE[annotation]}
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        members = [m for m in args if m is not type(None)]
        described = [_describe(m, depth + 1) for m in members]
        if len(described) == 1 and len(members) < len(args):
            return {"kind": "optional", "of": described[0]}
        return {"kind": "union", "of": described, "nullable": len(members) < len(args)}
    container = origin or annotation
    if container in (list, tuple):
        if container is list and len(args) == 1:
            return {"kind": "list", "items": _describe(args[0], depth + 1)}
        return {"kind": "list"}
    if container is dict:
        if len(args) == 2:
            return {"kind": "dict", "values": _describe(args[1], depth + 1)}
        return {"kind": "dict"}
    if isinstance(annotation, type):
        return _describe_class(annotation)
    raise ValueError(f"unsupported annotation {annotation!r}; {_SUPPORTED}")


def _describe_class(annotation: type) -> dict[str, Any]:
    if issubclass(annotation, dt.datetime):
        return {"kind": "datetime"}
    if issubclass(annotation, dt.date):
        return {"kind": "date"}
    if issubclass(annotation, pathlib.PurePath):
        return {"kind": "path"}
    if issubclass(annotation, enum.Enum):
        members = [{"name": m.name, "value": _enum_value(m)} for m in annotation]
        if len(members) > MAX_ENUM_MEMBERS:
            raise ValueError(f"{annotation.__name__} has more than {MAX_ENUM_MEMBERS} members")
        return {"kind": "enum", "name": annotation.__name__, "members": members}
    if _is_model(annotation):
        return {
            "kind": "pydantic",
            "name": annotation.__name__,
            "json_schema": _model_schema(annotation),
        }
    raise ValueError(f"unsupported annotation {annotation.__name__}; {_SUPPORTED}")


def _enum_value(member: enum.Enum) -> Any:
    value = member.value
    return value if _is_json(value) else None


def _is_model(annotation: Any) -> bool:
    # Only a module that imported pydantic can annotate with a model (as in params.py).
    base = getattr(sys.modules.get("pydantic"), "BaseModel", None)
    return isinstance(annotation, type) and base is not None and issubclass(annotation, base)


def _model_schema(model: Any) -> dict[str, Any]:
    make = getattr(model, "model_json_schema", None) or getattr(model, "schema", None)
    try:
        schema = make() if callable(make) else {}
    except Exception:  # a model whose schema cannot be generated is still a JSON object
        schema = {}
    return schema if isinstance(schema, dict) and _is_json(schema) else {}


_NO_JSON = object()


def _encode_default(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, pathlib.PurePath):
        return str(value)
    if _is_model(type(value)):
        dump = getattr(value, "model_dump", None)
        try:
            return dump(mode="json") if callable(dump) else json.loads(value.json())
        except Exception:
            return _NO_JSON
    if isinstance(value, tuple):
        value = list(value)
    return value if _is_json(value) else _NO_JSON


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return False
    return True


# ---- the stored document ------------------------------------------------------------------


def check_schema(schema: Any) -> None:
    """Raise ValidationError unless ``schema`` is a well-formed, bounded schema document
    (what the control plane checks before storing one it was sent)."""
    if not isinstance(schema, dict):
        raise ValidationError("the parameter schema must be a JSON object")
    if schema.get("version") != SCHEMA_VERSION:
        raise ValidationError(f"parameter schema version must be {SCHEMA_VERSION}")
    if not _is_json(schema) or len(json.dumps(schema)) > MAX_SCHEMA_BYTES:
        raise ValidationError(
            f"the parameter schema must be JSON of at most {MAX_SCHEMA_BYTES} bytes"
        )
    params = schema.get("parameters")
    if not isinstance(params, list) or len(params) > MAX_PARAMS:
        raise ValidationError(f"the parameter schema must list at most {MAX_PARAMS} parameters")
    seen: set[str] = set()
    for entry in params:
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name.isidentifier() or name in seen:
            raise ValidationError(f"parameter schema: bad or repeated name {_shown(name)}")
        seen.add(name)
        if not isinstance(entry.get("required"), bool):
            raise ValidationError(f"parameter schema: {name!r} needs a boolean 'required'")
        _check_type(entry.get("type"), name, 0)


def _check_type(kind: Any, name: str, depth: int) -> None:
    if not isinstance(kind, dict) or kind.get("kind") not in _KINDS or depth > _MAX_DEPTH:
        raise ValidationError(f"parameter schema: {name!r} has an unknown type {_shown(kind)}")
    for key in ("items", "values", "of"):
        inner = kind.get(key)
        if key == "of" and kind["kind"] == "union":
            if not isinstance(inner, list):
                raise ValidationError(f"parameter schema: {name!r} union needs a list")
            for member in inner:
                _check_type(member, name, depth + 1)
        elif inner is not None:
            _check_type(inner, name, depth + 1)
    if kind["kind"] == "enum" and not isinstance(kind.get("members"), list):
        raise ValidationError(f"parameter schema: {name!r} enum needs its members")


def parameter_names(schema: Mapping[str, Any]) -> list[str]:
    return [entry["name"] for entry in schema.get("parameters", ())]


def describe(schema: Mapping[str, Any]) -> list[str]:
    """One line per parameter for people: ``day: date (required)``, ``n: int = 3``."""
    lines = []
    for entry in schema.get("parameters", ()):
        text = f"{entry['name']}: {type_name(entry['type'])}"
        if "default" in entry:
            text += f" = {json.dumps(entry['default'])}"
        elif entry.get("required"):
            text += " (required)"
        lines.append(text)
    if schema.get("accepts_any"):
        lines.append("**kwargs: any")
    return lines


def type_name(kind: Mapping[str, Any]) -> str:
    name = str(kind.get("kind"))
    if name == "optional":
        return f"{type_name(kind['of'])} | None"
    if name == "union":
        parts = [type_name(m) for m in kind.get("of", ())] + (
            ["None"] if kind.get("nullable") else []
        )
        return " | ".join(parts)
    if name == "list" and "items" in kind:
        return f"list[{type_name(kind['items'])}]"
    if name == "dict" and "values" in kind:
        return f"dict[str, {type_name(kind['values'])}]"
    if name == "enum":
        names = ", ".join(m["name"] for m in kind.get("members", ())[:10])
        return f"{kind.get('name', 'Enum')}({names})"
    if name == "pydantic":
        return f"{kind.get('name', 'model')} (pydantic)"
    return name


# ---- validation (control plane, trigger time) ---------------------------------------------


def validate(schema: Mapping[str, Any], values: Any) -> dict[str, Any]:
    """Check decoded JSON ``values`` against ``schema``; return them normalized.

    Unknown names (unless the flow takes ``**kwargs``) and missing required ones are refused;
    each value must suit its type. Normalized: a float parameter holds a float, an Enum the
    member's name, a date or datetime its stripped ISO text. Defaults are not filled in: the
    runner applies the function's own.
    """
    if not isinstance(values, Mapping):
        raise ValidationError(f"parameters must be a JSON object, got {type(values).__name__}")
    if len(values) > MAX_PARAMS:
        raise ValidationError(f"at most {MAX_PARAMS} parameters, got {len(values)}")
    entries = {entry["name"]: entry for entry in schema.get("parameters", ())}
    result: dict[str, Any] = {}
    for name, value in values.items():
        entry = entries.get(name) if isinstance(name, str) else None
        if entry is None and not (schema.get("accepts_any") and isinstance(name, str)):
            known = ", ".join(entries) or "none"
            raise ValidationError(
                f"unknown parameter {str(name)[:_MAX_SHOWN]!r} (the flow takes: {known})"
            )
        kind = entry["type"] if entry is not None else {"kind": "any"}
        check_depth(value, f"parameter {name!r}")
        try:
            result[name] = _check(value, kind)
        except ValueError as exc:
            raise ValidationError(f"parameter {name!r}: {exc}") from None
    missing = [n for n, e in entries.items() if e.get("required") and n not in result]
    if missing:
        raise ValidationError(f"missing required parameter(s): {', '.join(missing)}")
    return result


def _check(value: Any, kind: Mapping[str, Any]) -> Any:
    name = kind["kind"]
    if name == "any":
        if not _is_json(value):
            raise ValueError(f"not a JSON value: {_shown(value)}")
        return value
    if name in ("optional", "union"):
        return _check_union(value, kind)
    if name == "bool":
        return _expect(value, bool, "true or false")
    if name == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {_shown(value)}")
        return value
    if name == "float":
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ValueError(f"expected a number, got {_shown(value)}")
        return float(value)
    if name == "str":
        return _expect(value, str, "a string")
    if name == "list":
        items = _expect(value, list, "a JSON array")
        inner = kind.get("items")
        return [_check(item, inner) for item in items] if inner else _check(items, {"kind": "any"})
    if name in ("dict", "pydantic"):
        return _check_object(value, kind)
    return _check_text_kind(value, kind)


def _check_union(value: Any, kind: Mapping[str, Any]) -> Any:
    members = [kind["of"]] if kind["kind"] == "optional" else list(kind["of"])
    if value is None and (kind["kind"] == "optional" or kind.get("nullable")):
        return None
    errors = []
    for member in members:
        try:
            return _check(value, member)
        except ValueError as exc:
            errors.append(str(exc))
    raise ValueError("; ".join(errors) or f"expected null, got {_shown(value)}")


def _check_object(value: Any, kind: Mapping[str, Any]) -> Any:
    what = (
        f"a JSON object for {kind.get('name', 'the model')}"
        if kind["kind"] == "pydantic"
        else "a JSON object"
    )
    data = _expect(value, dict, what)
    if kind["kind"] == "pydantic":
        required = kind.get("json_schema", {}).get("required", [])
        absent = [str(field) for field in required if field not in data]
        if absent:
            raise ValueError(
                f"not a valid {kind.get('name')}: missing field(s) {', '.join(absent[:10])}"
            )
        return _check(data, {"kind": "any"})
    inner = kind.get("values")
    if inner:
        return {str(k): _check(v, inner) for k, v in data.items()}
    return _check(data, {"kind": "any"})


def _check_text_kind(value: Any, kind: Mapping[str, Any]) -> Any:
    name = kind["kind"]
    if name == "enum":
        return _check_enum(value, kind)
    text = _expect(value, str, "a string")
    if name == "datetime":
        example = "2026-03-01T09:00:00+01:00 or 2026-03-01T08:00:00Z"
        try:
            parsed = dt.datetime.fromisoformat(text.strip())
        except ValueError:
            raise ValueError(
                f"expected an ISO 8601 date and time like {example}, got {_shown(text)}"
            ) from None
        if parsed.tzinfo is None or parsed.utcoffset() is None:
            raise ValueError(f"{_shown(text)} has no time zone; add an offset or Z, like {example}")
        return text.strip()
    if name == "date":
        try:
            dt.date.fromisoformat(text.strip())
        except ValueError:
            raise ValueError(f"expected a date like 2026-03-01, got {_shown(text)}") from None
        return text.strip()
    if not text or "\x00" in text:
        raise ValueError("expected a non-empty path")
    return text


def _check_enum(value: Any, kind: Mapping[str, Any]) -> str:
    members = kind.get("members", [])
    for member in members:
        if isinstance(value, str) and value == member["name"]:
            return str(member["name"])
    for member in members:
        stored = member.get("value")
        if stored is not None and type(stored) is type(value) and stored == value:
            return str(member["name"])
    names = ", ".join(str(m["name"]) for m in members[:20])
    raise ValueError(f"expected one of {names} (a name or a value), got {_shown(value)}")


def _expect(value: Any, kind: type, described: str) -> Any:
    if not isinstance(value, kind):
        raise ValueError(f"expected {described}, got {_shown(value)}")
    return value


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


# ---- text (``meridian deployments run -p k=v``: no flow code at hand, only the schema) ------

_TRUE = frozenset({"true", "1", "yes", "y", "on"})
_FALSE = frozenset({"false", "0", "no", "n", "off"})


def from_text(schema: Mapping[str, Any], raw: Mapping[str, str]) -> dict[str, Any]:
    """``-p`` texts converted to JSON values by the schema's types (as params.py converts
    them by annotations), then checked with :func:`validate` minus the required check (the
    deployment's defaults may supply them; the control plane checks the merged call)."""
    entries = {entry["name"]: entry for entry in schema.get("parameters", ())}
    converted: dict[str, Any] = {}
    for name, text in raw.items():
        entry = entries.get(name)
        kind = entry["type"] if entry is not None else {"kind": "any"}
        try:
            converted[name] = _from_text(text, kind)
        except (ValueError, ValidationError) as exc:
            raise ValidationError(f"parameter {name!r}: {exc}") from None
    optional = {**schema, "parameters": [dict(e, required=False) for e in entries.values()]}
    return validate(optional, converted)


def _from_text(text: str, kind: Mapping[str, Any]) -> Any:
    name = kind["kind"]
    if name in ("optional", "union"):
        nullable = name == "optional" or kind.get("nullable")
        if nullable and text.strip().lower() in ("none", "null"):
            return None
        members = [kind["of"]] if name == "optional" else list(kind["of"])
        errors = []
        for member in members:
            try:
                value = _from_text(text, member)
                _check(value, member)
                return value
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError("; ".join(errors))
    if name == "bool":
        lowered = text.strip().lower()
        if lowered in _TRUE or lowered in _FALSE:
            return lowered in _TRUE
        raise ValueError(f"expected true or false, got {_shown(text)}")
    if name in ("int", "float"):
        try:
            return int(text.strip()) if name == "int" else float(text.strip())
        except ValueError:
            expected = "an integer" if name == "int" else "a number"
            raise ValueError(f"expected {expected}, got {_shown(text)}") from None
    if name in ("str", "path", "date", "datetime"):
        return text
    if name == "enum":
        names = {m["name"] for m in kind.get("members", ())}
        return text if text in names else _json_or_text(text)
    if name in ("list", "dict", "pydantic"):
        try:
            return _loads(text)
        except ValueError:
            raise ValueError(f"expected JSON, got {_shown(text)}") from None
    return _json_or_text(text)


def _json_or_text(text: str) -> Any:
    try:
        return _loads(text)
    except ValueError:
        return text


def _loads(text: str) -> Any:
    """JSON text whose nesting the parser cannot take is too deep, not text."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValidationError(f"value is nested deeper than {MAX_DEPTH} levels") from None
