"""A reference to a step result kept in a site's result store, and when to use one.

A result under the inline threshold travels as JSON through the control plane; a larger one (or
one whose step names a store) stays in its environment's result store and only a ``ResultRef``
travels: which environment and store hold it, where (URI), its size, its sha256, the serializer
that wrote it and whether its bytes are sealed. The JSON form is strict (exact keys, types and
bounds) because references arrive from agents and flow runners over the network.

In step inputs (and a flow's result) a reference is the marker ``{"$meridian_ref": <the JSON
form>}`` (:data:`REF_MARKER`): exactly that one key, so a dict that merely has the key is
refused rather than taken for data. ``find_ref_markers`` lists the references a value names;
``replace_ref_markers`` puts loaded values in their place (the step executor).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

from meridian.core.errors import ValidationError
from meridian.core.selectors import validate_value

# Results at or above this many bytes go to the result store by default (per-step configurable).
INLINE_THRESHOLD_BYTES = 256 * 1024
# A per-step threshold can lower the default but never raise a result past what an inline
# value may be: arguments are bounded at 4 MiB on the wire.
MAX_INLINE_THRESHOLD_BYTES = 4 * 1024 * 1024
# Objects in a store are bounded too (5 TiB is S3's and GCS's largest object).
MAX_RESULT_BYTES = 5 * 1024**4
MAX_URI_LENGTH = 2048
MAX_REF_JSON_LENGTH = 4096
REF_VERSION = 1
# The one key of a reference marker inside step inputs or a flow result.
REF_MARKER: Final = "$meridian_ref"
# Markers are searched no deeper than inputs may nest (the SDK refuses deeper values).
MAX_MARKER_DEPTH = 200

_STORE_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$")
_SERIALIZER_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_URI_SCHEMES = ("s3://", "gs://", "https://", "http://", "file:///")
_FIELDS = frozenset({"v", "environment", "store", "uri", "size", "sha256", "serializer", "sealed"})

Placement = Literal["inline", "reference"]


@dataclass(frozen=True)
class ResultRef:
    """Where a stored result is and how to check and decode it. Validated on construction."""

    environment: str
    store: str
    uri: str
    size: int
    sha256: str
    serializer: str
    sealed: bool = False

    def __post_init__(self) -> None:
        problem = ref_problem(self)
        if problem is not None:
            raise ValidationError(f"invalid result reference: {problem}")

    def to_value(self) -> dict[str, Any]:
        return {
            "v": REF_VERSION,
            "environment": self.environment,
            "store": self.store,
            "uri": self.uri,
            "size": self.size,
            "sha256": self.sha256,
            "serializer": self.serializer,
            "sealed": self.sealed,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_value(), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_value(cls, value: Any) -> ResultRef:
        if not isinstance(value, dict):
            raise ValidationError("invalid result reference: expected a JSON object")
        keys = set(value)
        if keys != _FIELDS:
            missing = sorted(_FIELDS - keys)
            unknown = sorted(keys - _FIELDS)
            raise ValidationError(
                f"invalid result reference: missing fields {missing}, unknown fields {unknown}"
            )
        if value["v"] != REF_VERSION or type(value["v"]) is not int:
            raise ValidationError(
                f"invalid result reference: version {value['v']!r} is not {REF_VERSION}"
            )
        for name in ("environment", "store", "uri", "sha256", "serializer"):
            if not isinstance(value[name], str):
                raise ValidationError(f"invalid result reference: {name} must be a string")
        # bool is an int in Python: refuse it where a size is meant, and vice versa.
        if type(value["size"]) is not int:
            raise ValidationError("invalid result reference: size must be an integer")
        if type(value["sealed"]) is not bool:
            raise ValidationError("invalid result reference: sealed must be true or false")
        return cls(
            environment=value["environment"],
            store=value["store"],
            uri=value["uri"],
            size=value["size"],
            sha256=value["sha256"],
            serializer=value["serializer"],
            sealed=value["sealed"],
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> ResultRef:
        if len(text) > MAX_REF_JSON_LENGTH:
            raise ValidationError(
                f"invalid result reference: longer than {MAX_REF_JSON_LENGTH} characters"
            )
        try:
            value = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValidationError(f"invalid result reference: not JSON ({exc})") from None
        return cls.from_value(value)


def store_name_problem(name: object) -> str | None:
    """Why ``name`` is not a result store name (as in ``[result_stores.NAME]``), or None."""
    if not isinstance(name, str) or not _STORE_NAME_RE.match(name):
        return f"store {name!r} must be 1-63 lowercase letters, digits, '-' or '_'"
    return None


def ref_problem(ref: ResultRef) -> str | None:
    """Why ``ref`` is not a valid reference, or ``None``."""
    if not isinstance(ref.environment, str) or validate_value(ref.environment) is not None:
        return f"environment {ref.environment!r} is not a valid environment name"
    store_problem = store_name_problem(ref.store)
    if store_problem is not None:
        return store_problem
    uri_problem = _uri_problem(ref.uri)
    if uri_problem is not None:
        return uri_problem
    if type(ref.size) is not int or not 0 <= ref.size <= MAX_RESULT_BYTES:
        return f"size {ref.size!r} must be an integer from 0 to {MAX_RESULT_BYTES}"
    if not isinstance(ref.sha256, str) or not _SHA256_RE.match(ref.sha256):
        return "sha256 must be 64 lowercase hexadecimal characters"
    if not isinstance(ref.serializer, str) or not _SERIALIZER_RE.match(ref.serializer):
        return f"serializer {ref.serializer!r} is not a serializer name"
    if type(ref.sealed) is not bool:
        return "sealed must be true or false"
    return None


def _uri_problem(uri: object) -> str | None:
    if not isinstance(uri, str) or not uri:
        return "uri must be a non-empty string"
    if len(uri) > MAX_URI_LENGTH:
        return f"uri is longer than {MAX_URI_LENGTH} characters"
    if not uri.startswith(_URI_SCHEMES):
        return f"uri must start with one of {', '.join(_URI_SCHEMES)}"
    if not uri.isprintable() or any(c.isspace() for c in uri):
        return "uri must not contain whitespace or control characters"
    return None


def check_inline_threshold(threshold: int) -> int:
    """Validate a per-step inline threshold (bytes)."""
    if type(threshold) is not int or not 0 <= threshold <= MAX_INLINE_THRESHOLD_BYTES:
        raise ValidationError(
            f"inline threshold {threshold!r} must be an integer from 0 to "
            f"{MAX_INLINE_THRESHOLD_BYTES} bytes"
        )
    return threshold


def placement(
    size: int, *, threshold: int = INLINE_THRESHOLD_BYTES, store_requested: bool = False
) -> Placement:
    """Whether a serialized result of ``size`` bytes travels inline or by reference.

    A step that names a store (``store_requested``) always gets a reference; otherwise a result
    strictly under the threshold travels inline.
    """
    check_inline_threshold(threshold)
    if type(size) is not int or size < 0:
        raise ValidationError(f"result size {size!r} must be a non-negative integer")
    if store_requested or size >= threshold:
        return "reference"
    return "inline"


def ref_marker(ref: ResultRef) -> dict[str, Any]:
    """The JSON value that stands for ``ref`` inside step inputs or a flow result."""
    return {REF_MARKER: ref.to_value()}


def marker_ref(value: Any) -> ResultRef | None:
    """The reference ``value`` marks, or None when it is not a marker.

    Raises:
        ValidationError: ``value`` is a dict with the marker key and other keys, or the
            reference in it is invalid (a half-marker is never taken for plain data).
    """
    if not isinstance(value, dict) or REF_MARKER not in value:
        return None
    if len(value) != 1:
        others = sorted(str(k) for k in value if k != REF_MARKER)[:5]
        raise ValidationError(
            f"a result reference marker must be exactly {{{REF_MARKER!r}: <reference>}}; "
            f"this one also has the keys {others} ({REF_MARKER!r} is reserved for references)"
        )
    return ResultRef.from_value(value[REF_MARKER])


def find_ref_markers(value: Any) -> list[ResultRef]:
    """Every reference ``value`` names (nested in lists and dicts), each distinct one once,
    in depth-first order.

    Raises:
        ValidationError: a malformed marker, or nesting deeper than ``MAX_MARKER_DEPTH``.
    """
    found: dict[str, ResultRef] = {}
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if depth > MAX_MARKER_DEPTH:
            raise ValidationError(f"value nested deeper than {MAX_MARKER_DEPTH} levels")
        ref = marker_ref(item)
        if ref is not None:
            found.setdefault(ref.to_json(), ref)
        elif isinstance(item, dict):
            pending.extend((v, depth + 1) for v in reversed(list(item.values())))
        elif isinstance(item, list | tuple):
            pending.extend((v, depth + 1) for v in reversed(item))
    return list(found.values())


def replace_ref_markers(value: Any, load: Callable[[ResultRef], Any], _depth: int = 0) -> Any:
    """``value`` with each marker replaced by ``load(ref)`` (containers without a marker are
    returned as they are, not copied).

    Raises:
        ValidationError: a malformed marker, or nesting deeper than ``MAX_MARKER_DEPTH``.
    """
    if _depth > MAX_MARKER_DEPTH:
        raise ValidationError(f"value nested deeper than {MAX_MARKER_DEPTH} levels")
    ref = marker_ref(value)
    if ref is not None:
        return load(ref)
    if isinstance(value, dict):
        items = {k: replace_ref_markers(v, load, _depth + 1) for k, v in value.items()}
        changed = any(items[k] is not v for k, v in value.items())
        return items if changed else value
    if isinstance(value, list):
        replaced = [replace_ref_markers(v, load, _depth + 1) for v in value]
        changed = any(r is not v for r, v in zip(replaced, value, strict=True))
        return replaced if changed else value
    return value
