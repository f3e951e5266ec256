"""The retry policy of a step, as pure decisions: whether to retry a failed attempt, and when.

No clock, no randomness source, no I/O: the caller passes the attempt count, the failure's
classification and a uniform random number, and gets a :class:`RetryDecision` back. That keeps
the rule trivially testable and lets the orchestration layer record the exact reason.

Error classes (see ``protos/meridian/v1/common.proto``):

* ``permanent``, ``scheduling``, ``cancelled``: never retried. Retrying cannot fix a step that
  said "do not retry", a missing agent that already had its whole schedule timeout, or a
  person's decision to stop.
* ``transient``: retried while attempts remain, if ``retry_on`` is empty or names one of the
  exception's classes.
* ``timeout``, ``infrastructure``, ``lost_agent``: retried while attempts remain, whatever
  ``retry_on`` says: those are failures of the platform, not of the step's code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from meridian.core.errorinfo import ErrorClass
from meridian.core.errors import ValidationError
from meridian.core.spec import StepSpec

MAX_RETRY_DELAY_S = 3600.0
MAX_RETRIES = 1000
NEVER_RETRIED = frozenset({ErrorClass.PERMANENT, ErrorClass.SCHEDULING, ErrorClass.CANCELLED})
PLATFORM_FAILURES = frozenset(
    {ErrorClass.TIMEOUT, ErrorClass.INFRASTRUCTURE, ErrorClass.LOST_AGENT}
)
KNOWN_ERROR_CLASSES = frozenset(ErrorClass)


@dataclass(frozen=True)
class RetryPolicy:
    """How a step is retried.

    Attributes:
        retries: retries after the first attempt (0 = run once).
        delay_s: delay before the first retry.
        backoff: multiplier applied to the delay for each further retry (>= 1).
        jitter: fraction (0..1) of each delay that is randomised, to spread retries of many
            failing steps over time instead of retrying them all at once.
        retry_on: qualified exception names (``"builtins.ValueError"``; a bare name means a
            builtin) that make a transient failure retryable; empty means every exception.
    """

    retries: int = 0
    delay_s: float = 0.0
    backoff: float = 1.0
    jitter: float = 0.0
    retry_on: tuple[str, ...] = ()


@dataclass(frozen=True)
class RetryDecision:
    """The answer for one failed attempt; ``reason`` is recorded on the step's event."""

    retry: bool
    delay_s: float
    reason: str


def validate_policy(policy: RetryPolicy) -> None:
    """Raise :class:`ValidationError` naming the first field that makes no sense."""
    if not 0 <= policy.retries <= MAX_RETRIES:
        raise ValidationError(f"retries must be between 0 and {MAX_RETRIES}, got {policy.retries}")
    if not (math.isfinite(policy.delay_s) and policy.delay_s >= 0):
        raise ValidationError(f"retry delay must be a finite number >= 0, got {policy.delay_s}")
    if not (math.isfinite(policy.backoff) and policy.backoff >= 1):
        raise ValidationError(f"retry backoff must be a finite number >= 1, got {policy.backoff}")
    if not 0 <= policy.jitter <= 1:  # also false for NaN
        raise ValidationError(f"retry jitter must be between 0 and 1, got {policy.jitter}")
    for name in policy.retry_on:
        if not name or not all(part.isidentifier() for part in name.split(".")):
            raise ValidationError(
                f"retry_on entry {name!r} is not a qualified exception name like "
                "'builtins.ValueError' or 'mypkg.errors.Throttled'"
            )


def backoff_delay(policy: RetryPolicy, retry_number: int, rand: float) -> float:
    """Delay before retry ``retry_number`` (1 = the first retry), in seconds.

    ``base = delay_s * backoff ** (retry_number - 1)``, capped at :data:`MAX_RETRY_DELAY_S`;
    then ``base * (1 - jitter + 2 * jitter * rand)`` for ``rand`` in [0, 1], which stays within
    ``[base * (1 - jitter), base * (1 + jitter)]`` and averages ``base``; the result is capped
    at :data:`MAX_RETRY_DELAY_S` again.
    """
    # Written to stay within bounds even for an unvalidated policy (NaN compares false).
    if retry_number < 1 or not policy.delay_s > 0:
        return 0.0
    backoff = policy.backoff if policy.backoff >= 1 else 1.0
    jitter = policy.jitter if 0 <= policy.jitter <= 1 else 0.0
    rand = 0.5 if math.isnan(rand) else min(max(rand, 0.0), 1.0)
    # Work in log space: backoff ** n overflows a float long before n is absurd.
    log_base = math.log(policy.delay_s)
    if retry_number > 1:
        log_base += (retry_number - 1) * math.log(backoff)
    base = MAX_RETRY_DELAY_S if log_base >= math.log(MAX_RETRY_DELAY_S) else math.exp(log_base)
    jittered = base * (1.0 - jitter + 2.0 * jitter * rand)
    return min(jittered, MAX_RETRY_DELAY_S)


def decide_retry(
    policy: RetryPolicy,
    attempts_made: int,
    error_class: str,
    type_mro: Sequence[str],
    rand: float,
) -> RetryDecision:
    """Decide whether the step runs again after its ``attempts_made``-th attempt failed."""
    if error_class in NEVER_RETRIED:
        return RetryDecision(False, 0.0, f"{error_class} failures are never retried")
    if error_class not in KNOWN_ERROR_CLASSES:
        return RetryDecision(False, 0.0, f"unknown error class {error_class!r} is not retried")
    if attempts_made > policy.retries:
        used = "no retries configured" if policy.retries == 0 else f"{policy.retries} retries used"
        return RetryDecision(False, 0.0, f"{used} ({attempts_made} attempts made)")
    if error_class == ErrorClass.TRANSIENT and not retry_on_matches(policy.retry_on, type_mro):
        shown = _short_name(type_mro[0]) if type_mro else "the exception"
        return RetryDecision(False, 0.0, f"{shown} is not in retry_on")
    delay = backoff_delay(policy, attempts_made, rand)
    return RetryDecision(
        True, delay, f"{error_class} failure, retry {attempts_made} of {policy.retries}"
    )


def retry_on_matches(retry_on: Sequence[str], type_mro: Sequence[str]) -> bool:
    """Whether an exception with these classes (qualified names) is retryable under ``retry_on``.

    An empty ``retry_on`` matches everything. A bare name such as ``ValueError`` stands for the
    builtin (``builtins.ValueError``), which is how people usually write it.
    """
    if not retry_on:
        return True
    wanted = {name if "." in name else f"builtins.{name}" for name in retry_on}
    return any(name in wanted for name in type_mro)


def _short_name(qualified: str) -> str:
    return qualified.removeprefix("builtins.")


def policy_from_spec(spec: StepSpec) -> RetryPolicy:
    """The retry policy a step asked for (defaults live on ``StepSpec``)."""
    return RetryPolicy(
        retries=spec.retries,
        delay_s=spec.retry_delay_s,
        backoff=spec.retry_backoff or 1.0,
        jitter=spec.retry_jitter,
        retry_on=spec.retry_on,
    )
