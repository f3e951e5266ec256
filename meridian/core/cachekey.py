"""Cache keys of steps across runs: canonical JSON, code digests, user keys, expiration.

A completed step's result may be reused by a later call whose cache key is equal and whose
entry has not expired. The default key is a digest of the step's code and of its inputs, so
changing either runs the step again:

* **Code**: the step function's qualified name and source text, which the SDK reads with
  ``inspect.getsource`` and passes in (line endings and trailing spaces normalised, so a
  checkout on another OS gives the same key). When the source is not
  available (a function defined in a REPL), the code bundle's digest stands in: any change to
  the bundle then runs the step again, which errs on the side of running. Only the function's
  own source counts: a change in a helper it calls does not change the key (give an explicit
  ``cache_key`` or bump a version argument when that matters).
* **Inputs**: the call's arguments bound to parameter names with defaults applied
  (:func:`bind_inputs`), so ``f(1)``, ``f(x=1)`` and ``f()`` with ``x=1`` share a key, then
  :func:`canonical_json`: keys sorted, no whitespace, refusing anything that is not JSON. A
  stored result passed as an argument (a ``ResultRef`` or its marker) counts by what decides
  the value the step receives: its sha256, its serializer and whether it is sealed. Where it
  is stored (environment, store, URI) does not count: the same bytes read the same way give
  the same key wherever they are stored.

A user's ``cache_key`` callable receives a :class:`CacheKeyContext` and returns a string, or
None for "do not cache this call". Every key is scoped to the step's name, and starts with
the version of its canonical form (``ck2-``; ``ck1-`` keys counted a reference by its sha256
alone, so they never match a ``ck2-`` key and old entries simply miss). With ``secret``
(derived from the sealing key when inputs are sealed) the digest is an HMAC, so the control
plane can match equal keys without being able to test guesses of the inputs.

Pure: no I/O, no clock (the caller passes ``now``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from meridian.core.errors import ValidationError
from meridian.core.jsonwalk import NonJson, find_non_json
from meridian.core.resultref import REF_MARKER, ResultRef, marker_ref

MAX_DEPTH = 100
MAX_USER_KEY = 256
MAX_EXPIRATION = dt.timedelta(days=3650)
_VERSION = 2  # of the canonical form; also the keys' prefix (ck2-, ck2h-)


@dataclass(frozen=True)
class CacheKeyContext:
    """What a user's ``cache_key`` callable can base its key on."""

    step_name: str
    inputs: Mapping[str, Any]
    code_digest: str
    default_key: str


CacheKeyFn = Callable[[CacheKeyContext], str | None]


def canonical_json(value: Any) -> str:
    """JSON text that is equal for equal values, whatever the order of dict keys.

    Tuples count as lists (what a step receives for ``*args``); a result reference counts by
    its sha256, serializer and sealing (:func:`_ref_identity`). Raises
    :class:`ValidationError` naming the first part that is not JSON (a set, a datetime, a
    non-string dict key, NaN) instead of letting ``json`` coerce it silently.
    """
    value = _refs_by_digest(value, 0)
    found = find_non_json(value, MAX_DEPTH)
    problem = _non_json_text(found) if found else None
    if problem:
        raise ValidationError(
            f"cache key inputs must be JSON values; found {problem} (convert it, or give the "
            "step a cache_key)"
        )
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def _ref_identity(ref: ResultRef) -> dict[str, Any]:
    """What of a reference decides the value a step receives: the same bytes decoded by
    another serializer (JSON ``[1, 2]`` vs the bytes ``b"[1, 2]"``), or ciphertext instead
    of plaintext, are other values. Where the bytes are stored is left out on purpose."""
    return {REF_MARKER: {"sha256": ref.sha256, "serializer": ref.serializer, "sealed": ref.sealed}}


def _refs_by_digest(value: Any, depth: int) -> Any:
    """``value`` with each ``ResultRef`` or reference marker replaced by its identity."""
    if isinstance(value, ResultRef):
        return _ref_identity(value)
    if depth > MAX_DEPTH:
        return value  # find_non_json reports the depth
    if isinstance(value, dict):
        ref = marker_ref(value)
        if ref is not None:
            return _ref_identity(ref)
        return {k: _refs_by_digest(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_refs_by_digest(v, depth + 1) for v in value]
    return value


def _non_json_text(found: NonJson) -> str:
    what = {
        "depth": f"nesting deeper than {found.detail} levels",
        "float": f"the non-finite number {found.detail}",
        "key": f"a dict key of type {found.detail}",
        "type": f"a value of type {found.detail}",
    }[found.kind]
    if found.kind == "depth":
        return f"{what} at {found.path or 'top level'}"
    return f"{what} at {found.path}" if found.path else what


def bind_inputs(
    fn: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any]
) -> dict[str, Any]:
    """The call's arguments by parameter name, defaults applied (``*args`` as a list)."""
    try:
        bound = inspect.signature(fn).bind(*args, **kwargs)
    except TypeError as exc:
        raise ValidationError(f"cannot bind the arguments of {_name(fn)}: {exc}") from None
    bound.apply_defaults()
    return {
        name: list(value) if isinstance(value, tuple) else value
        for name, value in bound.arguments.items()
    }


def code_digest(qualname: str, source: str | None, bundle_sha256: str | None = None) -> str:
    """The digest of a step's code: its source, else the code bundle's digest."""
    if source is not None and source.strip():
        lines = source.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        normalised = "\n".join(line.rstrip() for line in lines).strip("\n")
        text = canonical_json({"v": _VERSION, "qualname": qualname, "source": normalised})
        return "src-" + hashlib.sha256(text.encode()).hexdigest()
    if bundle_sha256:
        if len(bundle_sha256) != 64 or any(c not in "0123456789abcdef" for c in bundle_sha256):
            raise ValidationError(
                f"bundle digest {bundle_sha256[:80]!r} is not a sha256 hex digest"
            )
        return "bundle-" + bundle_sha256
    raise ValidationError(
        f"step {qualname!r} has no readable source and no code bundle, so it has no default "
        "cache key; give it a cache_key"
    )


def default_cache_key(
    step_name: str, code: str, inputs: Mapping[str, Any], secret: bytes | None = None
) -> str:
    """The key of a call from its step's code digest and its bound inputs."""
    payload = {"v": _VERSION, "step": step_name, "code": code, "inputs": dict(inputs)}
    return _digest(canonical_json(payload), secret)


def user_cache_key(
    fn: CacheKeyFn, context: CacheKeyContext, secret: bytes | None = None
) -> str | None:
    """Call a user's ``cache_key`` callable and scope its answer to the step; None = no cache."""
    try:
        key = fn(context)
    except Exception as exc:
        raise ValidationError(
            f"cache_key of step {context.step_name!r} raised {type(exc).__name__}: {exc}"
        ) from exc
    if key is None:
        return None
    if not isinstance(key, str) or not key or len(key) > MAX_USER_KEY:
        raise ValidationError(
            f"cache_key of step {context.step_name!r} must return a string of 1 to "
            f"{MAX_USER_KEY} characters or None, got {_describe(key)}"
        )
    payload = {"v": _VERSION, "step": context.step_name, "user": key}
    return _digest(canonical_json(payload), secret)


def validate_expiration(expiration: dt.timedelta | None) -> None:
    """None (never expires) or a positive duration up to :data:`MAX_EXPIRATION`."""
    if expiration is None:
        return
    if not isinstance(expiration, dt.timedelta):
        raise ValidationError(
            f"cache_expiration must be a timedelta or None, got {type(expiration).__name__}"
        )
    if not dt.timedelta(0) < expiration <= MAX_EXPIRATION:
        raise ValidationError(
            f"cache_expiration must be more than 0 and at most {MAX_EXPIRATION.days} days, "
            f"got {expiration}"
        )


def expires_at(completed_at: dt.datetime, expiration: dt.timedelta | None) -> dt.datetime | None:
    """When a result completed at ``completed_at`` stops being reusable (None: never)."""
    validate_expiration(expiration)
    if completed_at.tzinfo is None:
        raise ValidationError("completed_at must be timezone-aware")
    return None if expiration is None else completed_at + expiration


def is_reusable(
    completed_at: dt.datetime, expiration: dt.timedelta | None, now: dt.datetime
) -> bool:
    """Whether a result completed at ``completed_at`` may be reused at ``now``."""
    end = expires_at(completed_at, expiration)
    return end is None or now < end


def _digest(text: str, secret: bytes | None) -> str:
    if secret is None:
        return f"ck{_VERSION}-" + hashlib.sha256(text.encode()).hexdigest()
    if len(secret) < 16:
        raise ValidationError("a cache key secret must be at least 16 bytes")
    return f"ck{_VERSION}h-" + hmac.new(secret, text.encode(), hashlib.sha256).hexdigest()


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def _describe(value: object) -> str:
    if isinstance(value, str):
        return f"a string of {len(value)} characters"
    return f"a {type(value).__name__}"
