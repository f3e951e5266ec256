"""``@step(cache=..., cache_key=..., cache_expiration=...)``: validation at decoration time and
the cache key each call is submitted with (code + bound inputs, or the user's function)."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from meridian import ValidationError, step
from meridian._convert import submit_request
from meridian.core.cachekey import CacheKeyContext
from meridian.core.sealing import KeyRing
from meridian.models import StepSubmission, SubmittedStep
from meridian.sdk.context import FlowContext, activate


class RecordingSubmitter:
    """Stands in for SubmitSteps: records the submissions, completes nothing."""

    def __init__(self) -> None:
        self.submitted: list[StepSubmission] = []

    def submit_steps(
        self, flow_run_id: str, submissions: Sequence[StepSubmission]
    ) -> list[SubmittedStep]:
        self.submitted.extend(submissions)
        return [SubmittedStep(s.key, f"sr-{s.key}", "PENDING") for s in submissions]


@step(cache=True, cache_expiration=dt.timedelta(hours=2))
def load(path: str, mode: str = "full") -> str:
    return path + mode


@step(cache=True)
def load_again(path: str, mode: str = "full") -> str:
    return path + mode


@step
def plain(path: str) -> str:
    return path


def by_path(ctx: CacheKeyContext) -> str | None:
    return None if ctx.inputs["path"] == "skip" else f"v1:{ctx.inputs['path']}"


@step(cache_key=by_path, cache_expiration=60)
def keyed(path: str, noise: int = 0) -> str:
    return path


def submitted(*calls: Callable[[], Any]) -> list[StepSubmission]:
    submitter = RecordingSubmitter()
    with activate(FlowContext("run-1", submitter)):
        for call in calls:
            call()
    return submitter.submitted


def test_equal_bound_inputs_share_a_key_and_other_inputs_do_not() -> None:
    subs = submitted(
        lambda: load.submit("a"),
        lambda: load.submit(path="a", mode="full"),
        lambda: load.submit("b"),
        lambda: load.submit("a", "delta"),
    )
    keys = [s.cache_key for s in subs]
    assert keys[0] == keys[1] and len(set(keys)) == 3
    assert all(k.startswith("ck2-") and len(k) == 68 for k in keys)
    assert [s.cache_expires_after_s for s in subs] == [7200.0] * 4
    assert [s.key for s in subs] == ["load#1", "load#2", "load#3", "load#4"]


def test_the_key_changes_with_the_step_code_or_name() -> None:
    # Same parameters and inputs, different function (name and source): different keys.
    (a,) = submitted(lambda: load.submit("a"))
    (b,) = submitted(lambda: load_again.submit("a"))
    assert a.cache_key != b.cache_key
    assert b.cache_expires_after_s == 0.0  # no expiration: a result of any age


def test_an_uncached_step_sends_no_key() -> None:
    (sub,) = submitted(lambda: plain.submit("a"))
    assert (sub.cache_key, sub.cache_expires_after_s) == ("", 0.0)


def test_a_cache_key_function_decides_the_key_or_opts_a_call_out() -> None:
    subs = submitted(
        lambda: keyed.submit("a", noise=1),
        lambda: keyed.submit("a", noise=2),
        lambda: keyed.submit("skip"),
    )
    assert subs[0].cache_key == subs[1].cache_key != ""  # noise is not part of the key
    assert subs[0].cache_expires_after_s == 60.0
    assert (subs[2].cache_key, subs[2].cache_expires_after_s) == ("", 0.0)


@step(cache_key=lambda ctx: 1 / 0)
def broken(x: int) -> int:
    return x


def test_a_failing_cache_key_function_names_the_step() -> None:
    with pytest.raises(ValidationError, match="cache_key of step 'broken' raised"):
        submitted(lambda: broken.submit(1))


def test_a_map_sends_one_cache_key_per_item_in_its_batch() -> None:
    subs = submitted(lambda: load.map(["a", "b", "c"]))
    request = submit_request("run-1", subs)
    (batch,) = request.batches
    assert list(batch.cache_keys) == [s.cache_key for s in subs]
    assert len(set(batch.cache_keys)) == 3 and batch.cache_expires_after_s == 7200.0
    plain_request = submit_request("run-1", submitted(lambda: plain.map(["a", "b"])))
    assert list(plain_request.batches[0].cache_keys) == []


def test_outside_a_flow_a_cached_step_is_a_plain_call() -> None:
    assert load("a") == "afull"


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"cache": "yes"}, "cache must be True or False"),
        ({"cache_key": "static"}, "cache_key must be a function"),
        ({"cache_expiration": 60}, "cache_expiration needs cache=True"),
        ({"cache": True, "cache_expiration": 0}, "positive number of seconds"),
        ({"cache": True, "cache_expiration": float("inf")}, "positive number of seconds"),
        ({"cache": True, "cache_expiration": "1h"}, "must be a timedelta"),
        ({"cache": True, "cache_expiration": dt.timedelta(days=4000)}, "at most 3650 days"),
        ({"cache": True, "seal": "eu-sites"}, "a sealed step (seal='eu-sites') cannot be cached"),
    ],
    ids=["cache", "key", "no-cache", "zero", "inf", "text", "too-long", "sealed"],
)
def test_bad_cache_options_are_refused_at_decoration(options: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValidationError, match="step 'f'") as info:

        @step(**options)
        def f(x: int) -> int:
            return x

    assert needle in str(info.value)


def test_a_cached_step_in_a_sealed_flow_is_refused_when_called() -> None:
    ring = KeyRing({"eu-sites": os.urandom(64)})
    submitter = RecordingSubmitter()
    with (
        activate(FlowContext("run-1", submitter, keys=ring, seal="eu-sites")),
        pytest.raises(ValidationError, match="cached but its flow seals it with 'eu-sites'"),
    ):
        load.submit("a")
    assert submitter.submitted == []
