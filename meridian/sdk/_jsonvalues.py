"""Strict JSON-value checks for step inputs, step results and flow results.

``json.dumps`` silently turns tuples into lists and int dict keys into strings and accepts
NaN; a step would then receive something other than what the flow passed. This module finds
the first value that does not survive a JSON round trip unchanged in kind, so callers can
refuse it with a message naming where it is.
"""

from __future__ import annotations

import json
import math
from typing import Any

_MAX_DEPTH = 200


def describe_non_json(value: Any) -> str | None:
    """Return a description of the first non-JSON part of ``value``, or None if it is JSON.

    Tuples are accepted (they become lists, which is what users expect of ``*args``).
    """
    return _find(value, "", 0)


def _find(value: Any, path: str, depth: int) -> str | None:
    if depth > _MAX_DEPTH:
        return f"nesting deeper than {_MAX_DEPTH} levels at {path or 'top level'}"
    if value is None or isinstance(value, bool | int | str):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else _at(f"non-finite float {value!r}", path)
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = _find(item, f"{path}[{index}]", depth + 1)
            if found:
                return found
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return _at(f"a dict key of type {type(key).__name__}", path)
            found = _find(item, f"{path}[{key!r}]", depth + 1)
            if found:
                return found
        return None
    return _at(type(value).__name__, path)


def _at(what: str, path: str) -> str:
    return f"{what} at {path}" if path else what


def dumps(value: Any) -> str:
    """Compact, NaN-free JSON text of a value already checked by ``describe_non_json``."""
    return json.dumps(value, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
