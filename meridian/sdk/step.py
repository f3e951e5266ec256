"""``@step`` and the ``Step`` object: how a step call becomes a submission.

Inside a running flow (a ``FlowContext`` is active) calling a step submits it to the control
plane with a deterministic key and blocks for its result; ``submit`` and ``map`` return
futures instead. Outside a flow a step is an ordinary function call in this process, which
is what unit tests of step code want.

Keys: the n-th call of a step name in a run gets ``name#n``. An explicit key replaces it:
``@step(key="load")`` (a fixed key, for a step called once per run), ``@step(key=fn)`` where
``fn`` receives the call's arguments and returns the key, or per call
``my_step.with_options(key="load-eu")(...)``.

Sealing: ``@step(seal="eu-sites")`` (or ``@flow(seal=...)`` for every step of a flow) seals the
call's inputs with that key group before they leave this process, and only agents holding the
key can open them; ``seal=False`` opts a step out of its flow's default (docs/security.md).

Caching across runs: ``@step(cache=True)`` sends each call with a cache key (a digest of the
step's name, source and bound arguments, ``meridian.core.cachekey``); the control plane answers
a call whose key an earlier completed run computed (in the same environment scope, within
``cache_expiration``) with that result at once, and the step does not run.

Results that stay at their site (docs/results.md): a ``ResultRef`` (what a step with a stored
result resolves to) passed anywhere in a call's arguments travels as a ``{"$meridian_ref":
...}`` marker inside the inputs, and is listed beside them (``input_refs_json``, outside any
sealing) so the control plane can check it; the step receives the loaded value.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import inspect
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Generic, ParamSpec, TypeVar, overload

from meridian import models
from meridian.core.cachekey import (
    CacheKeyContext,
    CacheKeyFn,
    bind_inputs,
    default_cache_key,
    user_cache_key,
)
from meridian.core.errors import SealError, ValidationError
from meridian.core.resultref import find_ref_markers
from meridian.core.stepfiles import MAX_INPUT_FILES
from meridian.sdk._jsonvalues import describe_non_json, dumps
from meridian.sdk._options import (
    CachePolicy,
    KeyFunction,
    StepOptions,
    build_cache_policy,
    build_spec,
    check_key,
    check_seal,
    location,
)
from meridian.sdk.context import FlowContext, current_context
from meridian.sdk.futures import StepFuture
from meridian.sdk.results import with_markers

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


class Step(Generic[P, R]):
    """A function decorated with ``@step``; the agent imports it and runs ``.fn``."""

    __meridian_step__ = True

    def __init__(self, fn: Callable[P, R], options: StepOptions) -> None:
        self.fn = fn
        self.options = options
        self.spec: models.StepSpec = build_spec(fn, options)
        self.name = self.spec.name
        where = f"step {self.name!r} ({location(fn)})"
        self.seal = check_seal(options.seal, where, allow_false=True)
        self.cache: CachePolicy | None = build_cache_policy(fn, options, where)
        self._signature = inspect.signature(fn)
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<Step {self.name} ({location(self.fn)})>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        context = current_context()
        if context is None:
            return self.fn(*args, **kwargs)
        result: R = self._submit_many(context, [(args, kwargs)])[0].result()
        return result

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> StepFuture:
        """Submit one call and return its future at once (run steps in parallel)."""
        context = current_context()
        if context is None:
            return _run_locally(self, lambda: self.fn(*args, **kwargs))
        return self._submit_many(context, [(args, kwargs)])[0]

    def map(self, items: Iterable[Any], **common_kwargs: Any) -> list[StepFuture]:
        """Fan out: one call per item (as the first argument), submitted in batches."""
        calls = [((item,), common_kwargs) for item in items]
        context = current_context()
        if context is None:
            return [_run_locally(self, functools.partial(self.fn, *a, **kw)) for a, kw in calls]
        return self._submit_many(context, calls)

    def with_options(self, **overrides: Any) -> Step[P, R]:
        """A copy of this step with some ``@step`` arguments replaced (e.g. ``key=``)."""
        try:
            options = dataclasses.replace(self.options, **overrides)
        except TypeError as exc:
            raise ValidationError(f"{self!r}: with_options: {exc}") from None
        return Step(self.fn, options)

    # -- submission ------------------------------------------------------------------------

    def _submit_many(
        self, context: FlowContext, calls: list[tuple[tuple[Any, ...], dict[str, Any]]]
    ) -> list[StepFuture]:
        self._check_importable()
        group = context.seal_group(self.seal)
        if group is not None and self.cache is not None:
            raise ValidationError(
                f"step {self.name!r} ({location(self.fn)}) is cached but its flow seals it "
                f"with {group!r}: a sealed result can only be opened by the run that produced "
                "it; give the step seal=False or drop its caching"
            )
        if group is not None:
            # Before any call is numbered: a missing key must not shift later keys.
            self._guard_seal(lambda: context.keys().require(group, "this flow runner"))
        expires_after_s = self.cache.expires_after_s if self.cache else 0.0
        submissions = []
        for args, kwargs in calls:
            inputs, input_refs = self._encode_inputs(args, kwargs)
            number = context.next_call_number(self.name)
            key = self._key_for(number, args, kwargs)
            cache_key = self._cache_key_for(args, kwargs)
            if group is not None:
                inputs = self._seal_inputs(context, group, key, inputs)
            submissions.append(
                models.StepSubmission(
                    key=key,
                    spec=self.spec,
                    inputs_json=inputs,
                    cache_key=cache_key,
                    cache_expires_after_s=expires_after_s if cache_key else 0.0,
                    input_refs_json=input_refs,
                )
            )
        return context.submit(submissions)

    def _cache_key_for(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """The call's cache key ("" = not cached): its step's code and bound inputs, or what
        the step's ``cache_key`` function makes of them."""
        if self.cache is None:
            return ""
        inputs = bind_inputs(self.fn, args, kwargs)
        default = default_cache_key(self.name, self.cache.code, inputs)
        if self.cache.key_fn is None:
            return default
        context = CacheKeyContext(self.name, inputs, self.cache.code, default)
        return user_cache_key(self.cache.key_fn, context) or ""

    def _seal_inputs(self, context: FlowContext, group: str, key: str, inputs: str) -> str:
        return self._guard_seal(lambda: context.seal_inputs(group, key, inputs))

    def _guard_seal(self, action: Callable[[], T]) -> T:
        try:
            return action()
        except SealError as exc:
            raise SealError(f"step {self.name!r} ({location(self.fn)}): {exc}") from None

    def _key_for(self, number: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        key: str | KeyFunction | None = self.options.key
        if callable(key):
            key = key(*args, **kwargs)
            check_key(key, f"step {self.name!r}: the key function", allow_callable=False)
        return key if isinstance(key, str) else f"{self.name}#{number}"

    def _encode_inputs(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[str, tuple[str, ...]]:
        """The call's inputs JSON, with each result reference as its marker, and the JSON of
        every reference the inputs name."""
        encoded_args = [with_markers(value) for value in args]
        encoded_kwargs = {name: with_markers(value) for name, value in kwargs.items()}
        try:
            bound = self._signature.bind(*encoded_args, **encoded_kwargs)
        except TypeError as exc:
            raise ValidationError(f"step {self.name!r} called with bad arguments: {exc}") from None
        for name, value in bound.arguments.items():
            problem = describe_non_json(value)
            if problem:
                raise ValidationError(
                    f"argument {name!r} of step {self.name!r} is not JSON-serializable "
                    f"(got {problem})"
                )
        inputs = {"args": encoded_args, "kwargs": encoded_kwargs}
        try:
            refs = find_ref_markers(inputs)
        except ValidationError as exc:
            raise ValidationError(f"step {self.name!r} called with a bad input: {exc}") from None
        if len(refs) > MAX_INPUT_FILES:
            raise ValidationError(
                f"step {self.name!r} is called with {len(refs)} stored results; at most "
                f"{MAX_INPUT_FILES} may be passed to one call"
            )
        return dumps(inputs), tuple(ref.to_json() for ref in refs)

    def _check_importable(self) -> None:
        # The agent finds the step as `module.function` inside the bundle; these cannot be.
        if "<locals>" in self.spec.function or self.spec.module == "__main__":
            raise ValidationError(
                f"step {self.name!r} ({location(self.fn)}) cannot be imported by an agent as "
                f"{self.spec.module}.{self.spec.function}: define steps at module level of a "
                "file inside the flow's directory"
            )


def _run_locally(step: Step[Any, Any], call: Callable[[], Any]) -> StepFuture:
    """Outside a flow, submit/map run the function now and return a finished future."""
    future = StepFuture(step.name, step.name)
    try:
        future._set_result(call())
    except Exception as exc:
        future._set_exception(exc)
    return future


@overload
def step(fn: Callable[P, R], /) -> Step[P, R]: ...


@overload
def step(
    *,
    target: str = "",
    provider: str = "process",
    retries: int = 0,
    retry_delay: float = 1.0,
    retry_backoff: float = 2.0,
    retry_jitter: float = 0.1,
    timeout: float | None = None,
    schedule_timeout: float = 600.0,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = (),
    key: str | KeyFunction | None = None,
    name: str | None = None,
    options: dict[str, Any] | None = None,
    on_agent_lost: str = "retry",
    lost_after: float | None = None,
    secrets: dict[str, str] | None = None,
    seal: str | bool | None = None,
    isolation: str = "warm",
    cache: bool = False,
    cache_key: CacheKeyFn | None = None,
    cache_expiration: dt.timedelta | float | None = None,
    result_store: str | None = None,
    inline_threshold: int | None = None,
    serializer: str | None = None,
    concurrency: str | Sequence[str] | None = None,
) -> Callable[[Callable[P, R]], Step[P, R]]: ...


def step(fn: Callable[..., Any] | None = None, /, **kwargs: Any) -> Any:
    """Declare a step: where it runs (``target`` selector, ``provider``) and how it retries.

    Args:
        target: label selector of the agents that may run it ("" = any agent).
        provider: provider type on the agent, e.g. "process".
        retries: retries after the first attempt.
        retry_delay: seconds before the first retry; multiplied by ``retry_backoff`` (>= 1)
            for each further retry, randomised by the fraction ``retry_jitter`` (0..1).
        timeout: seconds an attempt may run (None = no limit).
        schedule_timeout: seconds an attempt may wait for a matching agent.
        retry_on: exception classes worth retrying (default: every exception).
        key: explicit step-run key, or a function of the call's arguments returning it.
        name: step name (default: the function name).
        options: provider-specific options (a JSON object).
        on_agent_lost: when the agent running an attempt stops heartbeating for
            ``lost_after`` seconds: "retry" it on any matching agent (default), "fail" the
            step, or "wait" for that agent to come back.
        lost_after: seconds of silence before an agent's attempt counts as lost (None = the
            control plane's default).
        secrets: environment variable name -> secret reference resolved by the agent at the
            site ("env:NAME", "file:/path", "aws-sm:name", "gcp-sm:projects/.../versions/v",
            "azure-kv:vault/name"); values never pass through the control plane.
        seal: key group (e.g. "eu-sites") that seals the step's inputs, result and error
            texts end to end: the control plane stores only ciphertext and digests. The flow
            runner reads its keys from ``MERIDIAN_SEAL_KEYS``, agents from their config.
            None = the flow's ``seal`` (if any); False = not sealed even in a sealed flow.
        isolation: "warm" (default): the process provider may run the step in a warm
            interpreter that already ran steps of the same code bundle (output, environment,
            cwd and child processes stay per step; module-level state does not); "process":
            always a fresh interpreter, for steps that change global state. Providers that
            start fresh infrastructure for every attempt ignore it.
        cache: reuse the result of an earlier run's call with the same cache key instead of
            running (caching across runs, docs/user-guide.md). The default key is a digest
            of the step's name, its source code and the call's arguments (bound to parameter
            names, defaults applied), so changing any of them runs the step again.
        cache_key: a function of a ``meridian.core.cachekey.CacheKeyContext`` (step name,
            bound inputs, code digest, default key) returning the key, or None to not cache
            that call; giving it implies ``cache=True``.
        cache_expiration: how old a reused result may be (a timedelta or seconds; None = any
            age). Sealed steps cannot be cached: their results open only in their own run.
        result_store: a result store of the site (``[result_stores.NAME]`` in the agent's
            config) that always keeps the result; the call then resolves to a
            ``meridian.ResultRef`` (docs/results.md). None: results of at least
            ``inline_threshold`` bytes go to the environment's default store.
        inline_threshold: bytes (1 .. 4 MiB; None = 256 KiB) from which a serialized result
            stays at its site and travels as a ``ResultRef`` instead of a value.
        serializer: how the result is written when it stays at its site: None or "" (automatic:
            JSON; Parquet for pandas DataFrames and pyarrow Tables; raw bytes for ``bytes``,
            ``bytearray`` and ``memoryview``), "json", "parquet", "bytes", or
            "pickle" for any picklable object. Pickle is an explicit opt-in: loading a
            pickle runs code chosen by whoever wrote it, so readers refuse it unless they
            trust it (``ResultRef.load(trust_pickle=True)``; a step opted in to pickle may
            take pickled inputs).
        concurrency: a named global concurrency limit (``meridian limits set NAME N``) or a
            list of them: each attempt holds a slot of every one while it is assigned or
            running, so at most N such steps run at once across every run and agent. A
            waiting attempt says which limit it waits for and its place in line; a limit
            that does not exist is refused when the step is submitted.
    """
    if fn is not None:
        if kwargs:
            raise TypeError("use @step or @step(...), not both")
        return Step(fn, StepOptions())
    options = StepOptions(**kwargs)

    def decorate(func: Callable[P, R]) -> Step[P, R]:
        return Step(func, options)

    return decorate
