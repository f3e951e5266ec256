"""Validation of ``@step(...)`` arguments into a ``models.StepSpec``.

Runs at decoration time, i.e. when the flow module is imported, so a bad target or retry
policy is reported before any run is created. Every message names the step and where it is
defined (``module:line``) plus the offending argument.
"""

from __future__ import annotations

import datetime as dt
import inspect
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from meridian import models
from meridian.core.cachekey import CacheKeyFn, code_digest, validate_expiration
from meridian.core.errors import SealError, SelectorError, ValidationError
from meridian.core.resultref import MAX_INLINE_THRESHOLD_BYTES, store_name_problem
from meridian.core.sealing import check_key_group
from meridian.core.secrets import check_secret_references
from meridian.core.selectors import parse_selector
from meridian.core.serializers import KNOWN_SERIALIZERS
from meridian.core.spec import Isolation
from meridian.sdk._jsonvalues import describe_non_json, dumps

KeyFunction = Callable[..., str]
MAX_KEY_LENGTH = 256


@dataclass(frozen=True)
class StepOptions:
    """The arguments of ``@step`` exactly as the user gave them (before validation)."""

    name: str | None = None
    target: str = ""
    provider: str = "process"
    retries: int = 0
    retry_delay: float = 1.0
    retry_backoff: float = 2.0
    retry_jitter: float = 0.1
    timeout: float | None = None
    schedule_timeout: float = 600.0
    retry_on: Any = ()
    key: str | KeyFunction | None = None
    options: Mapping[str, Any] | None = None
    on_agent_lost: str = "retry"
    lost_after: float | None = None
    secrets: Mapping[str, str] | None = None
    # Key group sealing inputs and results; None = the flow's default, False = never sealed.
    seal: str | bool | None = None
    isolation: str = "warm"
    # Caching across runs (meridian.core.cachekey): the default key, or a user's key function.
    cache: bool = False
    cache_key: CacheKeyFn | None = None
    cache_expiration: dt.timedelta | float | None = None
    # Results that stay at their site (docs/results.md).
    result_store: str | None = None
    inline_threshold: int | None = None
    serializer: str | None = None
    # Named global concurrency limits (``meridian limits set``) the step holds while it runs.
    concurrency: str | Sequence[str] | None = None


@dataclass(frozen=True)
class CachePolicy:
    """A step's validated caching options: its code digest (part of every default key), the
    user's key function if any, and how old a reused result may be (0 = any age)."""

    code: str
    key_fn: CacheKeyFn | None
    expires_after_s: float


def build_cache_policy(fn: Callable[..., Any], opts: StepOptions, where: str) -> CachePolicy | None:
    """The step's caching, or None when it is not cached; errors name the bad argument."""
    if not isinstance(opts.cache, bool):
        raise ValidationError(f"{where}: cache must be True or False, got {opts.cache!r}")
    if opts.cache_key is not None and not callable(opts.cache_key):
        raise ValidationError(
            f"{where}: cache_key must be a function of a CacheKeyContext returning a string "
            f"(or None: do not cache that call), got {opts.cache_key!r}"
        )
    cached = opts.cache or opts.cache_key is not None
    if not cached:
        if opts.cache_expiration is not None:
            raise ValidationError(
                f"{where}: cache_expiration needs cache=True or a cache_key (it would do nothing)"
            )
        return None
    if isinstance(opts.seal, str):
        # A sealed result is bound to the run that sealed it: no other run could open it.
        raise ValidationError(
            f"{where}: a sealed step (seal={opts.seal!r}) cannot be cached; its sealed result "
            "can only be opened by the run that produced it"
        )
    expiration = _check_expiration(opts.cache_expiration, where)
    try:
        source: str | None = inspect.getsource(fn)
    except (OSError, TypeError):
        source = None
    try:
        code = code_digest(fn.__qualname__, source)
    except ValidationError as exc:
        raise ValidationError(f"{where}: {exc}") from None
    return CachePolicy(code, opts.cache_key, expiration)


def _check_expiration(value: Any, where: str) -> float:
    if value is None:
        return 0.0
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value) or value <= 0:
            raise ValidationError(
                f"{where}: cache_expiration must be a positive number of seconds or a "
                f"timedelta, got {value!r}"
            )
        value = dt.timedelta(seconds=value)
    try:
        validate_expiration(value)
    except ValidationError as exc:
        raise ValidationError(f"{where}: {exc}") from None
    seconds: float = value.total_seconds()
    return seconds


def location(fn: Callable[..., Any]) -> str:
    """``module:line`` of a function's definition, for error messages."""
    code = getattr(fn, "__code__", None)
    line = f":{code.co_firstlineno}" if code is not None else ""
    return f"{getattr(fn, '__module__', '?')}{line}"


def qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def build_spec(fn: Callable[..., Any], opts: StepOptions) -> models.StepSpec:
    """Validate ``opts`` for ``fn`` and return the spec sent with every submission."""
    fn_name = getattr(fn, "__name__", "?")
    name = opts.name if opts.name is not None else fn_name
    # A bad name cannot identify the step in the message; the function name can.
    _check_name(name, f"step {fn_name!r} ({location(fn)})")
    where = f"step {name!r} ({location(fn)})"
    if not isinstance(opts.provider, str) or not opts.provider.strip():
        raise ValidationError(f"{where}: provider must be a non-empty string")
    timeout = 0.0 if opts.timeout is None else opts.timeout
    check_key(opts.key, where, allow_callable=True)
    return models.StepSpec(
        name=name,
        module=fn.__module__,
        function=fn.__qualname__,
        target=_check_target(opts.target, where),
        provider=opts.provider.strip(),
        retries=_check_retries(opts.retries, where),
        retry_delay_s=_check_number("retry_delay", opts.retry_delay, where),
        retry_backoff=_check_number("retry_backoff", opts.retry_backoff, where, low=1.0),
        retry_jitter=_check_number("retry_jitter", opts.retry_jitter, where, high=1.0),
        timeout_s=_check_number("timeout", timeout, where),
        schedule_timeout_s=_check_number("schedule_timeout", opts.schedule_timeout, where),
        retry_on=_check_retry_on(opts.retry_on, where),
        options_json=_check_options(opts.options, where),
        on_agent_lost=_check_on_agent_lost(opts.on_agent_lost, where),
        lost_after_s=_check_number("lost_after", opts.lost_after or 0.0, where),
        secrets=tuple(sorted(check_secret_references(opts.secrets or {}, where).items())),
        isolation=_check_isolation(opts.isolation, where),
        result_store=_check_result_store(opts.result_store, where),
        inline_threshold_bytes=_check_inline_threshold(opts.inline_threshold, where),
        serializer=_check_serializer(opts.serializer, where),
        concurrency=check_concurrency(opts.concurrency, where),
    )


# As the control plane checks them (``control_plane.orchestration.limits.validate_name``).
_LIMIT_NAME = re.compile(r"[a-z0-9][a-z0-9_.:-]{0,62}")
MAX_STEP_LIMITS = 8


def check_concurrency(value: Any, where: str) -> tuple[str, ...]:
    """A limit name or a list of them, as sorted unique names (the order they are taken)."""
    if value is None:
        return ()
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list | tuple) or len(names) > MAX_STEP_LIMITS:
        raise ValidationError(
            f"{where}: concurrency must be a limit name or a list of at most {MAX_STEP_LIMITS}, "
            f"got {value!r}"[:300]
        )
    for name in names:
        if not isinstance(name, str) or not _LIMIT_NAME.fullmatch(name):
            raise ValidationError(
                f"{where}: concurrency limit name {name!r} must be 1-63 lower-case letters, "
                "digits, '_', '.', ':' or '-', starting with a letter or digit"[:300]
            )
    return tuple(sorted(set(names)))


def _check_result_store(value: Any, where: str) -> str:
    if value is None:
        return ""
    problem = store_name_problem(value)
    if problem:
        raise ValidationError(
            f"{where}: result_store {value!r} must name a result store of the site's agent "
            f"config ([result_stores.NAME]): {problem}"
        )
    return str(value)


def _check_inline_threshold(value: Any, where: str) -> int:
    """Bytes; 0 on the wire means the default, so a step gives 1 .. 4 MiB."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{where}: inline_threshold must be a number of bytes, got {value!r}")
    if not 1 <= value <= MAX_INLINE_THRESHOLD_BYTES:
        raise ValidationError(
            f"{where}: inline_threshold must be from 1 to {MAX_INLINE_THRESHOLD_BYTES} bytes "
            f"(4 MiB), got {value!r}; to always store the result, name a result_store"
        )
    return value


def _check_serializer(value: Any, where: str) -> str:
    """One of the known serializers (pickle is an explicit opt-in: reading one runs code), or
    None / "" for automatic ("" is what the wire and step files say for automatic)."""
    if value is None or value == "":
        return ""
    if not isinstance(value, str) or value not in KNOWN_SERIALIZERS:
        accepted = ", ".join(repr(name) for name in sorted(KNOWN_SERIALIZERS))
        raise ValidationError(
            f"{where}: serializer must be one of {accepted}, or None (automatic), got {value!r}"
        )
    return value


def check_seal(value: Any, where: str, *, allow_false: bool) -> str | bool | None:
    """``seal=``: a key group name, None (not sealed / the flow's default) or, for a step,
    False (never sealed, even in a sealed flow)."""
    if value is None or (allow_false and value is False):
        return value  # type: ignore[no-any-return]
    try:
        return check_key_group(value, f"{where}: seal")
    except SealError as exc:
        # A bad option is a definition error like any other ``@step`` argument.
        raise ValidationError(str(exc)) from None


def _check_on_agent_lost(value: Any, where: str) -> str:
    if value not in ("retry", "fail", "wait"):
        raise ValidationError(
            f"{where}: on_agent_lost must be 'retry', 'fail' or 'wait' (got {value!r})"
        )
    return str(value)


def _check_isolation(value: Any, where: str) -> str:
    allowed = [str(i) for i in Isolation]
    if value not in allowed:
        raise ValidationError(
            f"{where}: isolation must be 'warm' (may reuse a warm interpreter) or 'process' "
            f"(always a fresh one), got {value!r}"
        )
    return str(value)


def _check_name(name: Any, where: str) -> None:
    if not isinstance(name, str) or not name.strip():
        raise ValidationError(f"{where}: name must be a non-empty string")
    # '#' separates the name from the call number in generated keys.
    if "#" in name or len(name) > 200:
        raise ValidationError(f"{where}: name must be at most 200 characters without '#'")


def _check_target(target: Any, where: str) -> str:
    if not isinstance(target, str):
        raise ValidationError(f"{where}: target must be a selector string, got {target!r}")
    text = target.strip()
    if text:
        try:
            parse_selector(text)
        except SelectorError as exc:
            raise SelectorError(f"{where}: invalid target {text!r}: {exc}") from exc
    return text


def _check_retries(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValidationError(f"{where}: retries must be an integer >= 0, got {value!r}")
    return value


def _check_number(
    arg: str, value: Any, where: str, *, low: float = 0.0, high: float | None = None
) -> float:
    ok = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= low
        and (high is None or value <= high)
    )
    if not ok:
        bounds = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValidationError(f"{where}: {arg} must be a number {bounds}, got {value!r}")
    return float(value)


def _check_retry_on(value: Any, where: str) -> tuple[str, ...]:
    items = value if isinstance(value, tuple | list) else (value,)
    names: list[str] = []
    for item in items:
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise ValidationError(f"{where}: retry_on must list exception classes, got {item!r}")
        names.append(qualified_name(item))
    return tuple(names)


def _check_options(options: Mapping[str, Any] | None, where: str) -> str:
    if not options:
        return ""
    if not isinstance(options, Mapping):
        raise ValidationError(f"{where}: options must be a dict, got {type(options).__name__}")
    problem = describe_non_json(dict(options))
    if problem:
        raise ValidationError(f"{where}: options are not JSON-serializable (got {problem})")
    return dumps(dict(options))


def check_key(key: Any, where: str, *, allow_callable: bool) -> None:
    """An explicit key is a non-empty string (or, at decoration, a function returning one)."""
    if key is None or (allow_callable and callable(key)):
        return
    if not isinstance(key, str) or not key.strip() or len(key) > MAX_KEY_LENGTH:
        raise ValidationError(
            f"{where}: key must be a non-empty string of at most {MAX_KEY_LENGTH} characters"
            + (" or a function returning one" if allow_callable else "")
            + f", got {key!r}"
        )
    # Generated keys are "name#n"; refusing '#' keeps explicit keys from colliding with them.
    if "#" in key:
        raise ValidationError(f"{where}: key {key!r} must not contain '#'")
