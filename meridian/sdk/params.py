"""Turn ``-p key=value`` strings into flow arguments, guided by the flow's signature.

Annotations decide the conversion: ``int``, ``float``, ``bool``, ``str``, ``list``/``dict``
(and their parametrised forms, given as JSON), ``X | None`` / ``Optional[X]`` (``none`` or
``null`` gives None), ``Any``. Unannotated parameters take JSON when the text parses as JSON
and the text itself otherwise. Every failure is a ``ValidationError`` naming the parameter.
"""

from __future__ import annotations

import inspect
import json
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from meridian.core.errors import ValidationError
from meridian.sdk._jsonvalues import describe_non_json

_TRUE = frozenset({"true", "1", "yes", "y", "on"})
_FALSE = frozenset({"false", "0", "no", "n", "off"})
_NONE = frozenset({"none", "null"})


def split_assignments(items: Sequence[str]) -> dict[str, str]:
    """``["a=1", "b=x=y"]`` -> ``{"a": "1", "b": "x=y"}`` (the CLI's repeated ``-p``)."""
    result: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValidationError(f"parameter {item!r} must look like name=value")
        result[name.strip()] = value
    return result


def parse_params(fn: Callable[..., Any], raw: Mapping[str, str]) -> dict[str, Any]:
    """Convert raw strings to the values ``fn`` expects; check names and required ones."""
    signature = inspect.signature(fn)
    hints = _type_hints(fn)
    params = signature.parameters
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    named = {n: p for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    values: dict[str, Any] = {}
    for name, text in raw.items():
        if name not in named and not accepts_any:
            known = ", ".join(named) or "none"
            raise ValidationError(f"unknown parameter {name!r} (the flow takes: {known})")
        values[name] = convert(name, text, hints.get(name, inspect.Parameter.empty))
    missing = [
        n
        for n, p in params.items()
        if p.default is p.empty
        and n not in values
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if missing:
        flags = " ".join(f"-p {n}=..." for n in missing)
        raise ValidationError(f"missing required parameter(s): {', '.join(missing)} ({flags})")
    return values


def _type_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception:
        # An annotation that cannot be resolved (a name only imported under TYPE_CHECKING)
        # should not make the flow unusable: fall back to the raw annotations.
        return dict(getattr(fn, "__annotations__", {}))


def convert(name: str, text: str, annotation: Any) -> Any:
    """Convert one raw value for the parameter ``name`` annotated ``annotation``."""
    try:
        return _convert(text, annotation)
    except ValueError as exc:
        raise ValidationError(f"parameter {name!r}: {exc}") from None


def _convert(text: str, annotation: Any) -> Any:
    if annotation in (inspect.Parameter.empty, Any, object) or isinstance(annotation, str):
        return _json_or_text(text)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return _convert_union(text, typing.get_args(annotation))
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
    raise ValueError(
        f"unsupported annotation {annotation!r}; use int, float, bool, str, list or dict"
    )


def _convert_union(text: str, members: tuple[Any, ...]) -> Any:
    concrete = [m for m in members if m is not type(None)]
    if len(concrete) < len(members) and text.strip().lower() in _NONE:
        return None
    errors = []
    for member in concrete:
        try:
            return _convert(text, member)
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
