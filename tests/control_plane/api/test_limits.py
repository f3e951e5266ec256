"""Per-agent limits on calls in flight (bundle downloads)."""

from __future__ import annotations

import pytest

from control_plane.api.agent_service import MAX_DOWNLOADS_PER_AGENT
from control_plane.api.limits import InFlightLimit


def test_each_key_gets_its_own_slots_and_a_release_frees_one() -> None:
    limit = InFlightLimit(2)
    assert limit.try_acquire("a") and limit.try_acquire("a")
    assert not limit.try_acquire("a")  # a third download of agent a is refused...
    assert limit.try_acquire("b")  # ...while agent b is not affected
    limit.release("a")
    assert limit.in_flight("a") == 1 and limit.try_acquire("a")


def test_idle_keys_leave_nothing_behind() -> None:
    limit = InFlightLimit(1)
    for n in range(1000):
        assert limit.try_acquire(f"agent-{n}")
        limit.release(f"agent-{n}")
    assert limit._counts == {}


def test_the_limit_is_sane() -> None:
    assert 1 <= MAX_DOWNLOADS_PER_AGENT <= 16
    with pytest.raises(ValueError):
        InFlightLimit(0)
