"""Finding the first part of a value that is not plain JSON.

``json.dumps`` silently turns tuples into lists and int dict keys into strings, and accepts
NaN. Callers (the SDK's input and result checks, cache keys) refuse such values with their own
wording; this walk, shared by all of them, says what was found and where.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class NonJson:
    """``kind``: ``depth`` (nested deeper than allowed), ``float`` (NaN or infinite; ``detail``
    is its repr), ``key`` (a non-string dict key; ``detail`` its type name) or ``type`` (a
    value of another type; ``detail`` its type name). ``path`` is like ``['a'][0]``, "" at
    the top."""

    kind: Literal["depth", "float", "key", "type"]
    detail: str
    path: str


def find_non_json(value: Any, max_depth: int) -> NonJson | None:
    """The first non-JSON part of ``value`` in depth-first order, or None. Tuples count as
    lists (what a step receives for ``*args``)."""
    return _find(value, "", 0, max_depth)


def _find(value: Any, path: str, depth: int, max_depth: int) -> NonJson | None:
    if depth > max_depth:
        return NonJson("depth", str(max_depth), path)
    if value is None or isinstance(value, bool | int | str):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else NonJson("float", repr(value), path)
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = _find(item, f"{path}[{index}]", depth + 1, max_depth)
            if found:
                return found
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return NonJson("key", type(key).__name__, path)
            found = _find(item, f"{path}[{key!r}]", depth + 1, max_depth)
            if found:
                return found
        return None
    return NonJson("type", type(value).__name__, path)
