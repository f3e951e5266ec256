"""Cache keys: canonical JSON, code digests, default and user keys, expiration."""

from __future__ import annotations

import datetime as dt
import inspect
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meridian.core.cachekey import (
    MAX_EXPIRATION,
    CacheKeyContext,
    bind_inputs,
    canonical_json,
    code_digest,
    default_cache_key,
    expires_at,
    is_reusable,
    user_cache_key,
    validate_expiration,
)
from meridian.core.errors import ValidationError
from meridian.core.resultref import REF_MARKER, ResultRef

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
SECRET = b"s" * 32
BUNDLE = "ab" * 32


def load(x: int, mode: str = "full", *more: int, **options: Any) -> None: ...


SOURCE = inspect.getsource(load)
CODE = code_digest("load", SOURCE)

# --- canonical JSON ----------------------------------------------------------------------


def test_canonical_json_ignores_dict_order_and_whitespace() -> None:
    a = {"b": 1, "a": {"y": [1, 2], "x": None}}
    b = {"a": {"x": None, "y": [1, 2]}, "b": 1}
    assert canonical_json(a) == canonical_json(b) == '{"a":{"x":null,"y":[1,2]},"b":1}'


def test_canonical_json_keeps_distinct_values_distinct() -> None:
    texts = {canonical_json(v) for v in (1, 1.5, "1", True, None, [1], {"1": 1}, "é")}
    assert len(texts) == 8
    assert canonical_json((1, 2)) == canonical_json([1, 2])


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    # REF_MARKER is reserved for references (hypothesis draws string constants from the source).
    lambda children: (
        st.lists(children) | st.dictionaries(st.text().filter(lambda k: k != REF_MARKER), children)
    ),
    max_leaves=25,
)


@given(value=json_values, seed=st.randoms(use_true_random=False))
def test_canonical_json_is_stable_under_any_key_order(value: Any, seed: Any) -> None:
    def shuffled(v: Any) -> Any:
        if isinstance(v, dict):
            items = list(v.items())
            seed.shuffle(items)
            return {k: shuffled(x) for k, x in items}
        if isinstance(v, list):
            return [shuffled(x) for x in v]
        return v

    assert canonical_json(shuffled(value)) == canonical_json(value)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ({"when": dt.datetime(2026, 1, 1)}, "a value of type datetime at ['when']"),
        ({"tags": {"a", "b"}}, "a value of type set at ['tags']"),
        ({1: "x"}, "a dict key of type int"),
        ([1, math.nan], "the non-finite number nan at [1]"),
        ({"x": [math.inf]}, "the non-finite number inf at ['x'][0]"),
        (b"bytes", "a value of type bytes"),
        (object(), "a value of type object"),
    ],
)
def test_canonical_json_refuses_non_json_clearly(value: Any, fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        canonical_json(value)
    assert fragment in str(info.value)
    assert "give the step a cache_key" in str(info.value)


def test_canonical_json_bounds_nesting() -> None:
    deep: Any = []
    for _ in range(150):
        deep = [deep]
    with pytest.raises(ValidationError, match="nesting deeper than 100 levels"):
        canonical_json(deep)


# --- binding inputs ----------------------------------------------------------------------


def test_equivalent_calls_bind_to_the_same_inputs() -> None:
    expected = {"x": 1, "mode": "full", "more": [], "options": {}}
    assert bind_inputs(load, (1,), {}) == expected
    assert bind_inputs(load, (), {"x": 1}) == expected
    assert bind_inputs(load, (1, "full"), {}) == expected
    assert bind_inputs(load, (1, "x", 7, 8), {"z": 2}) == {
        "x": 1,
        "mode": "x",
        "more": [7, 8],
        "options": {"z": 2},
    }


def test_binding_errors_name_the_function() -> None:
    with pytest.raises(ValidationError, match="cannot bind the arguments of load"):
        bind_inputs(load, (), {})


# --- code digests ------------------------------------------------------------------------


def test_code_digest_follows_the_source() -> None:
    assert CODE.startswith("src-")
    assert code_digest("load", SOURCE.replace("\n", "\r\n")) == CODE
    assert code_digest("load", SOURCE.replace("\n", "   \n")) == CODE
    assert code_digest("load", SOURCE.replace('"full"', '"fast"')) != CODE
    assert code_digest("other", SOURCE) != CODE


def test_code_digest_falls_back_to_the_bundle() -> None:
    assert code_digest("load", None, BUNDLE) == "bundle-" + BUNDLE
    assert code_digest("load", "  \n", BUNDLE) == "bundle-" + BUNDLE
    with pytest.raises(ValidationError, match="no readable source and no code bundle"):
        code_digest("load", None)
    with pytest.raises(ValidationError, match="not a sha256 hex digest"):
        code_digest("load", None, "../etc")


# --- default and user keys ---------------------------------------------------------------


def test_default_key_changes_with_inputs_or_code_and_only_then() -> None:
    inputs = bind_inputs(load, (1,), {})
    key = default_cache_key("load", CODE, inputs)
    assert key.startswith("ck2-") and len(key) == 4 + 64
    assert default_cache_key("load", CODE, dict(reversed(list(inputs.items())))) == key
    assert default_cache_key("load", CODE, bind_inputs(load, (), {"x": 1})) == key
    assert default_cache_key("load", CODE, bind_inputs(load, (2,), {})) != key
    changed = code_digest("load", SOURCE + "\n# changed\n")
    assert default_cache_key("load", changed, inputs) != key
    assert default_cache_key("other", CODE, inputs) != key


def test_a_secret_makes_the_key_an_hmac() -> None:
    inputs = {"x": 1}
    plain = default_cache_key("load", CODE, inputs)
    keyed = default_cache_key("load", CODE, inputs, SECRET)
    assert keyed.startswith("ck2h-") and keyed != plain
    assert default_cache_key("load", CODE, inputs, SECRET) == keyed
    assert default_cache_key("load", CODE, inputs, b"t" * 32) != keyed
    with pytest.raises(ValidationError, match="at least 16 bytes"):
        default_cache_key("load", CODE, inputs, b"short")


def test_default_key_refuses_non_json_inputs() -> None:
    with pytest.raises(ValidationError, match="a value of type set at \\['inputs'\\]\\['x'\\]"):
        default_cache_key("load", CODE, {"x": {1}})


def stored(**changes: Any) -> ResultRef:
    """A stored result of the bytes ``[1, 2]``, JSON-serialized, unless ``changes`` say so."""
    fields: dict[str, Any] = {
        "environment": "aws-prod",
        "store": "s3-main",
        "uri": "s3://bucket/runs/r1/as_json/1/result",
        "size": 6,
        "sha256": "ab" * 32,
        "serializer": "json",
        "sealed": False,
    }
    fields.update(changes)
    return ResultRef(**fields)


def test_a_reference_input_counts_by_how_its_bytes_are_read() -> None:
    key = default_cache_key("kind", CODE, {"v": stored()})
    # The same bytes decoded as another type, or sealed, are another value for the step.
    assert default_cache_key("kind", CODE, {"v": stored(serializer="bytes")}) != key
    assert default_cache_key("kind", CODE, {"v": stored(sealed=True)}) != key
    assert default_cache_key("kind", CODE, {"v": stored(sha256="cd" * 32)}) != key
    # Where the same bytes are stored does not count: a copy elsewhere still hits.
    moved = stored(environment="gcp-prod", store="gcs-main", uri="gs://b/runs/r9/x/1/result")
    assert default_cache_key("kind", CODE, {"v": moved}) == key
    assert default_cache_key("kind", CODE, {"v": {REF_MARKER: stored().to_value()}}) == key


def context(inputs: dict[str, Any] | None = None) -> CacheKeyContext:
    inputs = inputs or {"x": 1, "day": "2026-01-01"}
    return CacheKeyContext("load", inputs, CODE, default_cache_key("load", CODE, inputs))


def test_user_keys_are_scoped_to_the_step() -> None:
    by_day = user_cache_key(lambda c: str(c.inputs["day"]), context())
    assert by_day is not None and by_day.startswith("ck2-")
    same_day = user_cache_key(
        lambda c: str(c.inputs["day"]), context({"x": 2, "day": "2026-01-01"})
    )
    assert same_day == by_day
    other_step = CacheKeyContext("store", {}, CODE, "")
    assert user_cache_key(lambda c: "2026-01-01", other_step) != by_day
    assert user_cache_key(lambda c: c.default_key, context()) is not None


def test_a_user_key_of_none_means_do_not_cache() -> None:
    assert user_cache_key(lambda c: None, context()) is None


@pytest.mark.parametrize(
    ("fn", "fragment"),
    [
        (lambda c: 42, "must return a string of 1 to 256 characters or None, got a int"),
        (lambda c: "", "got a string of 0 characters"),
        (lambda c: "k" * 257, "got a string of 257 characters"),
        (lambda c: c.inputs["missing"], "cache_key of step 'load' raised KeyError"),
    ],
)
def test_bad_user_keys_are_refused_clearly(fn: Any, fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        user_cache_key(fn, context())
    assert fragment in str(info.value)


# --- expiration --------------------------------------------------------------------------


def test_expiration_arithmetic() -> None:
    hour = dt.timedelta(hours=1)
    assert expires_at(T0, hour) == T0 + hour
    assert expires_at(T0, None) is None
    assert is_reusable(T0, hour, T0 + hour - dt.timedelta(microseconds=1))
    assert not is_reusable(T0, hour, T0 + hour)
    assert is_reusable(T0, None, T0 + dt.timedelta(days=10_000))


@pytest.mark.parametrize(
    "bad", [dt.timedelta(0), dt.timedelta(seconds=-1), MAX_EXPIRATION + dt.timedelta(1), 3600]
)
def test_bad_expirations_are_refused(bad: Any) -> None:
    with pytest.raises(ValidationError, match="cache_expiration must be"):
        validate_expiration(bad)


def test_naive_completion_times_are_refused() -> None:
    with pytest.raises(ValidationError, match="timezone-aware"):
        expires_at(dt.datetime(2026, 1, 1), dt.timedelta(hours=1))
