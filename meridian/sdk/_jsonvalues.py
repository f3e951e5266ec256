"""Strict JSON-value checks for step inputs, step results and flow results.

``json.dumps`` silently turns tuples into lists and int dict keys into strings and accepts
NaN; a step would then receive something other than what the flow passed. This module finds
the first value that does not survive a JSON round trip unchanged in kind, so callers can
refuse it with a message naming where it is.
"""

from __future__ import annotations

import json
from typing import Any

from meridian.core.jsonwalk import NonJson, find_non_json

_MAX_DEPTH = 200


def describe_non_json(value: Any) -> str | None:
    """Return a description of the first non-JSON part of ``value``, or None if it is JSON.

    Tuples are accepted (they become lists, which is what users expect of ``*args``).
    """
    found = find_non_json(value, _MAX_DEPTH)
    return _describe(found) if found else None


def _describe(found: NonJson) -> str:
    what = {
        "depth": f"nesting deeper than {found.detail} levels",
        "float": f"non-finite float {found.detail}",
        "key": f"a dict key of type {found.detail}",
        "type": found.detail,
    }[found.kind]
    if found.kind == "depth":
        return f"{what} at {found.path or 'top level'}"
    return f"{what} at {found.path}" if found.path else what


def dumps(value: Any) -> str:
    """Compact, NaN-free JSON text of a value already checked by ``describe_non_json``."""
    return json.dumps(value, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
