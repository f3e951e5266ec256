from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control_plane.orchestration.retry import (
    MAX_RETRY_DELAY_S,
    RetryPolicy,
    backoff_delay,
    decide_retry,
    retry_on_matches,
    validate_policy,
)
from meridian.core.errors import ValidationError

VALUE_ERROR_MRO = ("builtins.ValueError", "builtins.Exception", "builtins.BaseException")


def test_exponential_backoff_without_jitter() -> None:
    policy = RetryPolicy(retries=5, delay_s=2.0, backoff=3.0)
    delays = [backoff_delay(policy, n, rand=0.0) for n in range(1, 5)]
    assert delays == pytest.approx([2.0, 6.0, 18.0, 54.0])


def test_jitter_stays_within_its_band() -> None:
    policy = RetryPolicy(retries=3, delay_s=10.0, backoff=2.0, jitter=0.25)
    assert backoff_delay(policy, 2, rand=0.0) == pytest.approx(15.0)
    assert backoff_delay(policy, 2, rand=0.5) == pytest.approx(20.0)
    assert backoff_delay(policy, 2, rand=1.0) == pytest.approx(25.0)


def test_delay_is_capped_even_for_huge_exponents() -> None:
    policy = RetryPolicy(retries=1000, delay_s=1.0, backoff=10.0, jitter=1.0)
    assert backoff_delay(policy, 1000, rand=1.0) == MAX_RETRY_DELAY_S
    assert backoff_delay(policy, 1000, rand=0.0) == 0.0  # full jitter may pick "now"


def test_zero_delay_and_invalid_retry_numbers() -> None:
    assert backoff_delay(RetryPolicy(retries=3, delay_s=0.0, backoff=2.0), 3, 0.5) == 0.0
    assert backoff_delay(RetryPolicy(retries=3, delay_s=5.0), 0, 0.5) == 0.0


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(
    delay=st.floats(min_value=0.0, max_value=1e6),
    backoff=st.floats(min_value=1.0, max_value=100.0),
    jitter=st.floats(min_value=0.0, max_value=1.0),
    retry_number=st.integers(min_value=1, max_value=10_000),
    rand=st.floats(min_value=0.0, max_value=1.0),
)
def test_delay_is_always_within_bounds(
    delay: float, backoff: float, jitter: float, retry_number: int, rand: float
) -> None:
    policy = RetryPolicy(retries=10, delay_s=delay, backoff=backoff, jitter=jitter)
    result = backoff_delay(policy, retry_number, rand)
    assert 0.0 <= result <= MAX_RETRY_DELAY_S
    if delay > 0:
        base = delay
        for _ in range(retry_number - 1):
            if base >= MAX_RETRY_DELAY_S:
                break
            base *= backoff
        base = min(base, MAX_RETRY_DELAY_S)
        assert (
            base * (1 - jitter) * (1 - 1e-9)
            <= result
            <= min(base * (1 + jitter) * (1 + 1e-9), MAX_RETRY_DELAY_S)
        )


@pytest.mark.parametrize("error_class", ["permanent", "scheduling", "cancelled"])
def test_some_classes_are_never_retried(error_class: str) -> None:
    decision = decide_retry(RetryPolicy(retries=5), 1, error_class, VALUE_ERROR_MRO, 0.5)
    assert not decision.retry
    assert decision.reason == f"{error_class} failures are never retried"


@pytest.mark.parametrize("error_class", ["timeout", "infrastructure", "lost_agent"])
def test_platform_failures_ignore_retry_on(error_class: str) -> None:
    policy = RetryPolicy(retries=2, delay_s=1.0, retry_on=("mypkg.Throttled",))
    decision = decide_retry(policy, 1, error_class, (), 0.5)
    assert decision.retry and decision.delay_s == pytest.approx(1.0)
    assert not decide_retry(policy, 3, error_class, (), 0.5).retry


def test_transient_failures_retry_until_attempts_run_out() -> None:
    policy = RetryPolicy(retries=2, delay_s=1.0, backoff=2.0)
    first = decide_retry(policy, 1, "transient", VALUE_ERROR_MRO, 0.0)
    second = decide_retry(policy, 2, "transient", VALUE_ERROR_MRO, 0.0)
    third = decide_retry(policy, 3, "transient", VALUE_ERROR_MRO, 0.0)
    assert (first.retry, first.delay_s, first.reason) == (
        True,
        1.0,
        "transient failure, retry 1 of 2",
    )
    assert (second.retry, second.delay_s) == (True, 2.0)
    assert (third.retry, third.reason) == (False, "2 retries used (3 attempts made)")


def test_no_retries_configured() -> None:
    decision = decide_retry(RetryPolicy(), 1, "transient", VALUE_ERROR_MRO, 0.0)
    assert (decision.retry, decision.reason) == (False, "no retries configured (1 attempts made)")


def test_retry_on_filters_transient_failures() -> None:
    policy = RetryPolicy(retries=3, retry_on=("mypkg.Throttled", "KeyError"))
    refused = decide_retry(policy, 1, "transient", VALUE_ERROR_MRO, 0.0)
    assert (refused.retry, refused.reason) == (False, "ValueError is not in retry_on")
    subclass_mro = ("mypkg.SlowDown", "mypkg.Throttled", "builtins.Exception")
    assert decide_retry(policy, 1, "transient", subclass_mro, 0.0).retry
    assert decide_retry(policy, 1, "transient", ("builtins.KeyError",), 0.0).retry
    custom = decide_retry(policy, 1, "transient", ("mypkg.Other",), 0.0)
    assert custom.reason == "mypkg.Other is not in retry_on"


def test_retry_on_matching_rules() -> None:
    assert retry_on_matches((), ("anything.At.All",))
    assert retry_on_matches(("builtins.OSError",), ("builtins.ConnectionError", "builtins.OSError"))
    assert not retry_on_matches(("OSError",), ("mypkg.OSError",))


def test_unknown_error_class_is_not_retried() -> None:
    decision = decide_retry(RetryPolicy(retries=3), 1, "cosmic_ray", (), 0.0)
    assert not decision.retry and "unknown error class 'cosmic_ray'" in decision.reason


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (RetryPolicy(retries=-1), "retries must be between 0 and 1000, got -1"),
        (RetryPolicy(retries=10_000), "retries must be between 0 and 1000"),
        (RetryPolicy(delay_s=-1.0), "retry delay must be a finite number >= 0, got -1.0"),
        (RetryPolicy(delay_s=math.inf), "retry delay must be a finite number"),
        (RetryPolicy(backoff=0.5), "retry backoff must be a finite number >= 1, got 0.5"),
        (RetryPolicy(backoff=math.nan), "retry backoff must be"),
        (RetryPolicy(jitter=1.5), "retry jitter must be between 0 and 1, got 1.5"),
        (RetryPolicy(jitter=math.nan), "retry jitter must be between 0 and 1"),
        (RetryPolicy(retry_on=("not a name",)), "retry_on entry 'not a name' is not a qualified"),
        (RetryPolicy(retry_on=("",)), "retry_on entry '' is not"),
    ],
)
def test_invalid_policies_are_rejected(policy: RetryPolicy, message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(".", r"\.")):
        validate_policy(policy)


def test_valid_policy_passes() -> None:
    validate_policy(
        RetryPolicy(retries=3, delay_s=0.5, backoff=2, jitter=1, retry_on=("builtins.ValueError",))
    )
