"""A small, strict JSON-schema checker for provider options (pure; no dependency).

Providers advertise the schema of their per-step options when their agent connects; the control
plane checks a step's options against it at submission, so a typo fails the ``SubmitSteps`` call
with a clear message instead of failing at run time on a remote agent. It supports the subset
providers use: type, properties, required, additionalProperties, enum, minimum, maximum,
exclusiveMinimum, exclusiveMaximum, minLength, maxLength, pattern, items, minItems, maxItems,
oneOf, anyOf. Unknown keywords are ignored (the agent still validates fully before running).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "boolean": (bool,),
    "integer": (int,),
    "number": (int, float),
    "null": (type(None),),
}


def first_problem(schema: Mapping[str, Any], value: Any, path: str = "options") -> str | None:
    """The first way ``value`` breaks ``schema``, as a sentence naming the path; else None."""
    for check in (_type, _enum, _bounds, _string, _object, _array, _alternatives):
        problem = check(schema, value, path)
        if problem:
            return problem
    return None


def _is(kind: str, value: Any) -> bool:
    if kind in ("integer", "number") and isinstance(value, bool):
        return False
    if kind == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _TYPES.get(kind, (object,)))


def _type(schema: Mapping[str, Any], value: Any, path: str) -> str | None:
    kinds = schema.get("type")
    if kinds is None:
        return None
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    if any(_is(kind, value) for kind in kinds):
        return None
    return f"{path} must be {' or '.join(kinds)} (got {type(value).__name__})"


def _enum(schema: Mapping[str, Any], value: Any, path: str) -> str | None:
    allowed = schema.get("enum")
    if allowed is not None and value not in allowed:
        return f"{path} must be one of {', '.join(map(repr, allowed))} (got {value!r})"
    return None


def _bounds(schema: Mapping[str, Any], value: Any, path: str) -> str | None:
    if not _is("number", value):
        return None
    checks = (
        ("minimum", lambda b: value >= b, ">="),
        ("maximum", lambda b: value <= b, "<="),
        ("exclusiveMinimum", lambda b: value > b, ">"),
        ("exclusiveMaximum", lambda b: value < b, "<"),
    )
    for keyword, holds, sign in checks:
        bound = schema.get(keyword)
        if isinstance(bound, int | float) and not holds(bound):
            return f"{path} must be {sign} {bound} (got {value})"
    return None


def _string(schema: Mapping[str, Any], value: Any, path: str) -> str | None:
    if not isinstance(value, str):
        return None
    if len(value) < schema.get("minLength", 0):
        return f"{path} must have at least {schema['minLength']} character(s)"
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        return f"{path} must have at most {schema['maxLength']} characters"
    pattern = schema.get("pattern")
    if isinstance(pattern, str) and re.search(pattern, value) is None:
        return f"{path} must match {pattern!r} (got {value!r})"
    return None


def _object(schema: Mapping[str, Any], value: Any, path: str) -> str | None:
    if not isinstance(value, dict):
        return None
    missing = [k for k in schema.get("required", ()) if k not in value]
    if missing:
        return f"{path} is missing {', '.join(map(repr, missing))}"
    properties: Mapping[str, Any] = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        if key in properties:
            problem = first_problem(properties[key], item, f"{path}.{key}")
        elif extra is False:
            known = ", ".join(sorted(properties)) or "none"
            problem = f"{path}: unknown option {key!r} (known: {known})"
        elif isinstance(extra, dict):
            problem = first_problem(extra, item, f"{path}.{key}")
        else:
            problem = None
        if problem:
            return problem
    return None


def _array(schema: Mapping[str, Any], value: Any, path: str) -> str | None:
    if not isinstance(value, list):
        return None
    if len(value) < schema.get("minItems", 0):
        return f"{path} must have at least {schema['minItems']} item(s)"
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        return f"{path} must have at most {schema['maxItems']} items"
    items = schema.get("items")
    if isinstance(items, dict):
        for index, item in enumerate(value):
            problem = first_problem(items, item, f"{path}[{index}]")
            if problem:
                return problem
    return None


def _alternatives(schema: Mapping[str, Any], value: Any, path: str) -> str | None:
    for keyword in ("oneOf", "anyOf"):
        options = schema.get(keyword)
        if isinstance(options, list) and options:
            problems = [first_problem(option, value, path) for option in options]
            if all(problems):
                return problems[0]
    return None
