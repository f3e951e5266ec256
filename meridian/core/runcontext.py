"""Which run, step and attempt the current code belongs to: ``meridian.context()``.

A step process learns its context from the ``"context"`` object of its ``spec.json`` (written
by the provider from ``ExecutionSpec.context``, which the agent fills); a provider that does not
write it yet still passes the ``MERIDIAN_*`` environment variables every provider sets, from
which a smaller context is built. ``meridian.stepexec`` (and each step of a warm worker) makes
the context current for exactly one step call and resets it afterwards. The flow runner makes a
flow context current around the flow body (a ``contextvars`` variable, like its FlowContext).

Outside both, ``context()`` raises :class:`NoRunContext`: asking for the run id where there is
no run is a programming error, and a silent None would surface later as an unrelated failure.

This module is part of the shared core so that a step process never loads the SDK.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from typing import Any

from meridian.core.errors import MeridianError

MAX_FIELD_CHARS = 512  # ids, keys, names: far below this; a longer value is refused
MAX_CONTEXT_BYTES = 8 * 1024
# The environment variables every provider sets for a step (and that its subprocesses inherit).
ENV_RUN_ID = "MERIDIAN_FLOW_RUN_ID"
ENV_STEP_KEY = "MERIDIAN_STEP_KEY"
ENV_ATTEMPT_ID = "MERIDIAN_ATTEMPT_ID"
ENV_ATTEMPT_NUMBER = "MERIDIAN_ATTEMPT_NUMBER"

_TEXT_FIELDS = (
    "run_id",
    "flow_name",
    "step_key",
    "step_name",
    "attempt_id",
    "environment",
    "deployment",
    "agent_id",
)


class NoRunContext(MeridianError):
    """``meridian.context()`` was called outside a step and outside a flow body."""


@dataclass(frozen=True)
class RunContext:
    """Where the calling code runs. Fields that do not apply are None.

    In a step: ``run_id``, ``step_key``, ``step_name``, ``attempt_id``, ``attempt_number``
    (1 for the first try, 2 for the first retry, ...), ``environment`` and ``agent_id`` of the
    agent that runs it; ``flow_name`` is None (the agent is not told it). In a flow body:
    ``run_id`` and ``flow_name``; step and attempt fields are None, and ``environment`` is None
    when the body runs locally. ``deployment`` is None until deployments exist.
    """

    run_id: str
    flow_name: str | None = None
    step_key: str | None = None
    step_name: str | None = None
    attempt_id: str | None = None
    attempt_number: int | None = None
    environment: str | None = None
    deployment: str | None = None
    agent_id: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.run_id, str) or not self.run_id:
            raise ValueError("a run context needs a run id")
        for name in _TEXT_FIELDS:
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or len(value) > MAX_FIELD_CHARS):
                raise ValueError(f"run context field {name!r} must be a string of at most "
                                 f"{MAX_FIELD_CHARS} characters")  # fmt: skip
        number = self.attempt_number
        if number is not None and (isinstance(number, bool) or not isinstance(number, int)
                                   or number < 1):  # fmt: skip
            raise ValueError(f"attempt_number must be a positive integer, not {number!r}")

    @property
    def in_step(self) -> bool:
        return self.step_key is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Any) -> RunContext:
        """The context of a ``spec.json``; unknown keys are ignored (a newer agent's fields)."""
        if not isinstance(raw, Mapping):
            raise ValueError("the run context must be a JSON object")
        if len(json.dumps(raw, default=str)) > MAX_CONTEXT_BYTES:
            raise ValueError(f"the run context exceeds {MAX_CONTEXT_BYTES} bytes")
        known = {k: raw[k] for k in (*_TEXT_FIELDS, "attempt_number") if raw.get(k) is not None}
        return cls(**{"run_id": "", **known})  # no run id: refused by __post_init__

    @classmethod
    def from_environment(cls, env: Mapping[str, str]) -> RunContext | None:
        """The smaller context of the ``MERIDIAN_*`` variables, or None when they are absent."""
        run_id, step_key = env.get(ENV_RUN_ID), env.get(ENV_STEP_KEY)
        if not run_id or not step_key:
            return None
        number = env.get(ENV_ATTEMPT_NUMBER, "")
        return cls(
            run_id=run_id,
            step_key=step_key,
            step_name=step_key.rsplit("#", 1)[0],
            attempt_id=env.get(ENV_ATTEMPT_ID) or None,
            attempt_number=int(number) if number.isdigit() and int(number) > 0 else None,
        )


# A step sets a process-wide value (threads the step starts see it too); a warm worker runs
# one step at a time and resets it after each. A flow body uses a context variable instead,
# like the flow runner's own state, so two bodies in two threads stay apart.
_step: RunContext | None = None
_flow: ContextVar[RunContext | None] = ContextVar("meridian_run_context", default=None)


def context() -> RunContext:
    """The context of the step or flow body that is running; NoRunContext elsewhere."""
    current = _step or _flow.get()
    if current is None:
        raise NoRunContext(
            "meridian.context() is only available inside a step run by an agent or inside a "
            "flow body run by `meridian run` (a step function called directly has no run)"
        )
    return current


_watchers: list[Callable[[], None]] = []


def on_step_change(fn: Callable[[], None]) -> None:
    """Call ``fn`` whenever a step scope begins or ends (``runlog`` drops cached levels)."""
    if fn not in _watchers:
        _watchers.append(fn)


@contextlib.contextmanager
def step_scope(ctx: RunContext | None) -> Iterator[None]:
    """Make ``ctx`` the context of the step that runs inside the block; reset after it."""
    global _step
    saved, _step = _step, ctx
    for fn in _watchers:
        fn()
    try:
        yield
    finally:
        _step = saved
        for fn in _watchers:
            fn()


@contextlib.contextmanager
def flow_scope(ctx: RunContext) -> Iterator[None]:
    """Make ``ctx`` the context of the flow body that runs inside the block."""
    token = _flow.set(ctx)
    try:
        yield
    finally:
        _flow.reset(token)


def step_context_of(
    spec: Mapping[str, Any], env: Mapping[str, str] | None = None
) -> RunContext | None:
    """The context of a step spec: ``spec["context"]``, else the ``MERIDIAN_*`` environment,
    else None (a step started by hand; ``context()`` then raises inside it).

    Raises ValueError for a malformed context: the agent wrote it, so that is a bug to show,
    not something to run past with wrong ids.
    """
    raw = spec.get("context")
    if raw is not None:
        return RunContext.from_dict(raw)
    return RunContext.from_environment(os.environ if env is None else env)


def current_step() -> RunContext | None:
    """The context of the step running in this process, if one is."""
    return _step
