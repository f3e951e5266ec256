"""``meridian.core.convert``: the shared values to and from ``common.proto`` and back."""

from __future__ import annotations

import datetime as dt

import pytest

from meridian.core.convert import (
    error_from_proto,
    error_to_proto,
    ms_from_time,
    spec_from_proto,
    spec_to_proto,
    time_from_ms,
)
from meridian.core.errorinfo import ErrorClass, ErrorInfo
from meridian.core.spec import OnAgentLost, StepSpec
from protos.meridian.v1 import common_pb2

FULL_SPEC = StepSpec(
    name="extract",
    module="flows.etl",
    function="extract",
    target="cloud=aws",
    provider="aws-ecs",
    retries=3,
    retry_delay_s=2.5,
    retry_backoff=1.5,
    retry_jitter=0.1,
    timeout_s=30.0,
    schedule_timeout_s=90.0,
    retry_on=("builtins.ValueError",),
    options_json='{"cpu": 2}',
    on_agent_lost=OnAgentLost.FAIL,
    lost_after_s=45.0,
    secrets=(("API_KEY", "env:API_KEY"), ("DB_PASSWORD", "aws-sm:db")),
    isolation="process",
)


def _wire(message: common_pb2.StepSpec | common_pb2.ErrorInfo) -> bytes:
    # Through bytes, as on the wire, not just the in-memory message.
    return message.SerializeToString()


def test_step_spec_round_trip() -> None:
    for spec in (FULL_SPEC, StepSpec("s", "m", "f")):
        msg = common_pb2.StepSpec.FromString(_wire(spec_to_proto(spec)))
        assert spec_from_proto(msg) == spec


def test_step_spec_on_agent_lost_unset_on_the_wire_means_retry() -> None:
    msg = spec_to_proto(StepSpec("s", "m", "f"))
    msg.on_agent_lost = ""
    assert spec_from_proto(msg).on_agent_lost == OnAgentLost.RETRY


def test_step_spec_isolation_unset_on_the_wire_means_warm() -> None:
    msg = spec_to_proto(FULL_SPEC)
    msg.isolation = ""  # a sender that predates the field
    assert spec_from_proto(msg).isolation == "warm"


def test_error_round_trip() -> None:
    error = ErrorInfo(
        ErrorClass.TRANSIENT, "builtins.ValueError", "bad", "tb", ("builtins.ValueError",)
    )
    assert error_from_proto(common_pb2.ErrorInfo.FromString(_wire(error_to_proto(error)))) == error
    unknown = ErrorInfo("quota_exhausted", "x.Y", "over quota")
    assert error_from_proto(error_to_proto(unknown)) == unknown


def test_no_error_is_an_empty_message_and_back() -> None:
    assert error_to_proto(None) == common_pb2.ErrorInfo()
    assert error_from_proto(common_pb2.ErrorInfo()) is None


@pytest.mark.parametrize("ms", [0, -1, -1_700_000_000_000, 10**20])
def test_time_from_ms_unset_negative_or_out_of_range_is_none(ms: int) -> None:
    assert time_from_ms(ms) is None


def test_time_from_ms_is_aware_utc() -> None:
    assert time_from_ms(1) == dt.datetime(1970, 1, 1, 0, 0, 0, 1000, tzinfo=dt.UTC)
    at = time_from_ms(1_700_000_000_000)
    assert at == dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=dt.UTC)
    assert at is not None and at.utcoffset() == dt.timedelta(0)


def test_ms_from_time_none_is_unset() -> None:
    assert ms_from_time(None) == 0


@pytest.mark.parametrize("ms", [1000, 1_700_000_000_000, 1_700_000_000_500])
def test_ms_round_trip_on_whole_and_half_seconds(ms: int) -> None:
    assert ms_from_time(time_from_ms(ms)) == ms


def test_ms_round_trip_on_every_millisecond() -> None:
    assert [ms for ms in range(1, 2001) if ms_from_time(time_from_ms(ms)) != ms] == []
