"""``StepSpec``: how a step call is executed, with its defaults defined here and nowhere else.

The SDK builds it from ``@step(...)``, the control plane validates it, stores it on the step
run (a JSON column) and reads its typed fields to schedule, retry and time out attempts, and
the agent hands it to a provider. ``common.proto``'s ``StepSpec`` is its wire form.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

DEFAULT_PROVIDER = "process"
DEFAULT_RETRY_DELAY_S = 1.0
DEFAULT_RETRY_BACKOFF = 2.0
DEFAULT_RETRY_JITTER = 0.1
DEFAULT_SCHEDULE_TIMEOUT_S = 600.0


class Isolation(StrEnum):
    """How much of a fresh interpreter a step needs (the process provider's warm workers)."""

    WARM = "warm"  # may run in a warm, reused worker of its code bundle (the default)
    PROCESS = "process"  # always a fresh interpreter, e.g. a step that changes global state


class OnAgentLost(StrEnum):
    """What happens to an attempt whose agent stops heartbeating for ``lost_after_s``."""

    RETRY = "retry"  # run it again on any matching agent (the default)
    FAIL = "fail"  # the step fails
    WAIT = "wait"  # keep waiting for that agent to come back


@dataclass(frozen=True)
class StepSpec:
    """How a step call is executed; sent with every submission.

    Attributes:
        name: the step's name (defaults to the function name).
        module: importable module inside the code bundle.
        function: qualified name of the step object inside ``module``.
        target: label selector (Kubernetes syntax); ``""`` matches every agent.
        provider: provider type, e.g. ``"process"``.
        retries: retries after the first attempt.
        retry_delay_s: delay before the first retry.
        retry_backoff: multiplier per further retry (>= 1).
        retry_jitter: fraction 0..1 of each delay that is randomised.
        timeout_s: 0 = no timeout.
        schedule_timeout_s: how long an attempt may wait for a matching agent.
        retry_on: qualified exception names that make a failure retryable; empty = every one.
        options_json: provider-specific per-step options (a JSON object).
        on_agent_lost: see :class:`OnAgentLost`.
        lost_after_s: 0 = the control plane's default.
        secrets: (environment variable, secret reference) pairs, resolved at the site.
        isolation: see :class:`Isolation`; providers that always start fresh ignore it.
        result_store: a result store of the site (docs/results.md) that always keeps the
            result and returns a reference; "" = the environment's default store, used once
            the serialized result reaches the inline threshold.
        inline_threshold_bytes: serialized results of at least this many bytes stay at the
            site (0 = the default, ``meridian.core.resultref.INLINE_THRESHOLD_BYTES``).
        serializer: "" (automatic: JSON; Parquet for DataFrames and Arrow tables; raw bytes
            for bytes values), "json", "parquet", "bytes" or "pickle" (an explicit opt-in:
            reading a pickle runs code).
        concurrency: named global concurrency limits (``meridian limits set``) an attempt
            must hold a slot of, each, before it is assigned; taken in name order.
    """

    name: str
    module: str
    function: str
    target: str = ""
    provider: str = DEFAULT_PROVIDER
    retries: int = 0
    retry_delay_s: float = DEFAULT_RETRY_DELAY_S
    retry_backoff: float = DEFAULT_RETRY_BACKOFF
    retry_jitter: float = DEFAULT_RETRY_JITTER
    timeout_s: float = 0.0
    schedule_timeout_s: float = DEFAULT_SCHEDULE_TIMEOUT_S
    retry_on: tuple[str, ...] = ()
    options_json: str = ""
    on_agent_lost: str = OnAgentLost.RETRY
    lost_after_s: float = 0.0
    secrets: tuple[tuple[str, str], ...] = ()  # (env var name, secret reference)
    isolation: str = Isolation.WARM
    result_store: str = ""
    inline_threshold_bytes: int = 0
    serializer: str = ""
    concurrency: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """A JSON object (the step run's stored spec); ``from_json`` reads it back."""
        data = dataclasses.asdict(self)
        data["retry_on"] = list(self.retry_on)
        data["concurrency"] = list(self.concurrency)
        data["secrets"] = dict(self.secrets)
        data["on_agent_lost"] = str(self.on_agent_lost)
        data["isolation"] = str(self.isolation)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StepSpec:
        """Read a stored spec; a field it lacks takes the default above."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["retry_on"] = tuple(values.get("retry_on") or ())
        values["concurrency"] = tuple(values.get("concurrency") or ())
        secrets = values.get("secrets") or {}
        values["secrets"] = tuple(sorted(dict(secrets).items()))
        return cls(**values)

    @property
    def secret_map(self) -> dict[str, str]:
        return dict(self.secrets)
