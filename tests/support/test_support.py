"""The shared helpers fail the way their docstrings promise."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.deadlines import DEADLINE_S, TIME_SCALE, _read_time_scale
from tests.support.polling import apoll_until, poll_until


def test_time_scale_parsing() -> None:
    assert _read_time_scale(None) == 1.0 and _read_time_scale(" ") == 1.0
    assert _read_time_scale("2.5") == 2.5
    for bad in ("fast", "0", "-1", "nan", "inf"):
        with pytest.raises(ValueError, match="MERIDIAN_TEST_TIME_SCALE"):
            _read_time_scale(bad)
    assert DEADLINE_S == 60.0 * TIME_SCALE


def test_poll_until_returns_the_truthy_value() -> None:
    calls = iter([0, [], "ready"])
    assert poll_until(lambda: next(calls), interval=0.001) == "ready"


def test_poll_until_fails_with_the_message_and_last_observation() -> None:
    with pytest.raises(
        AssertionError, match=r"waiting for the queue to drain; last observed: \[\]"
    ):
        poll_until(lambda: [], timeout=0.05, message="the queue to drain")


def test_poll_until_reports_an_ignored_exception_as_the_last_observation() -> None:
    def refuse() -> bool:
        raise ConnectionRefusedError("not yet")

    with pytest.raises(AssertionError, match=r"ConnectionRefusedError\('not yet'\)"):
        poll_until(refuse, timeout=0.05, ignore=(ConnectionRefusedError,))


def test_apoll_until_awaits_async_predicates() -> None:
    async def scenario() -> str:
        state = {"n": 0}

        async def ready() -> str:
            state["n"] += 1
            return "done" if state["n"] >= 3 else ""

        return await apoll_until(ready, interval=0.001)

    assert asyncio.run(scenario()) == "done"
