"""How deeply a JSON value nests: one bound for every parameter value, checked without
recursion.

A run's parameters are walked recursively when it starts (reference markers,
``resultref.MAX_MARKER_DEPTH`` levels at most), so a deeper value must be refused where it
enters — a trigger, a webhook body, a deploy's defaults, ``-p`` on the command line — not
when the run starts. ``json.loads`` itself raises ``RecursionError`` near the interpreter's
recursion limit: :func:`loads` maps that to the same refusal.
"""

from __future__ import annotations

import json
from typing import Any

from meridian.core.errors import ValidationError
from meridian.core.resultref import MAX_MARKER_DEPTH

MAX_DEPTH = MAX_MARKER_DEPTH


def too_deep(what: str) -> ValidationError:
    return ValidationError(f"{what} is nested deeper than {MAX_DEPTH} levels")


def depth_above(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether lists and objects in ``value`` nest deeper than ``limit`` (iteratively)."""
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth >= limit and children:
            return True
        pending.extend((child, depth + 1) for child in children)
    return False


def check_depth(value: Any, what: str) -> None:
    """Raise :class:`ValidationError` when ``value`` nests deeper than ``MAX_DEPTH``."""
    if depth_above(value):
        raise too_deep(what)


def loads(text: str | bytes, what: str) -> Any:
    """``json.loads`` whose result nests at most ``MAX_DEPTH`` levels; a ValueError (not JSON)
    passes through, nesting too deep (also beyond what the parser can take) is a
    ValidationError naming ``what``."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise too_deep(what) from None
    check_depth(value, what)
    return value
