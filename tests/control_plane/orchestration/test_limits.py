"""Concurrency limits held by leases: grants in order, lapsed leases, waiting messages, and a
state machine proving a limit of N never has N+1 live holders under any interleaving."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from control_plane.orchestration.limits import (
    Holder,
    LimitState,
    Overflow,
    acquisition_order,
    blocking_limit,
    ordinal,
    release,
    renew,
    request,
    settle,
    validate_lease,
    validate_limit,
    validate_name,
    wait_position,
)
from meridian.core.errors import ValidationError

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
LEASE = dt.timedelta(seconds=30)
WAREHOUSE = "concurrency limit 'warehouse'"


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def full_warehouse() -> LimitState:
    holders = tuple(Holder(f"h{i}", at(30)) for i in range(4))
    return LimitState(WAREHOUSE, 4, holders, ("w1", "w2", "w3"))


def test_free_slots_go_to_waiters_in_order() -> None:
    state = LimitState(WAREHOUSE, 3, (Holder("h1", at(30)),), ("w1", "w2", "w3"))
    result = settle(state, at(0), LEASE)
    assert result.granted == (Holder("w1", at(30)), Holder("w2", at(30)))
    assert result.state.waiters == ("w3",)
    assert [h.holder_id for h in result.state.holders] == ["h1", "w1", "w2"]
    assert result.lapsed == () and result.refused == ()


def test_lapsed_leases_give_their_slots_back() -> None:
    state = full_warehouse()
    state = LimitState(WAREHOUSE, 4, (Holder("h0", at(10)), *state.holders[1:]), state.waiters)
    early = settle(state, at(9), LEASE)
    assert early.granted == () and early.lapsed == ()
    late = settle(state, at(10), LEASE)  # expires_at <= now: lapsed
    assert late.lapsed == ("h0",)
    assert late.granted == (Holder("w1", at(40)),)
    assert late.state.waiters == ("w2", "w3")


def test_the_waiting_message_names_the_limit_and_the_place_in_line() -> None:
    settled = settle(full_warehouse(), at(0), LEASE).state
    position = wait_position(settled, "w3")
    assert position is not None
    assert position.message == "waiting for concurrency limit 'warehouse' (4/4 held; 3rd in line)"
    assert (position.held, position.limit, position.position) == (4, 4, 3)
    assert wait_position(settled, "h1") is None
    assert wait_position(settled, "stranger") is None


def test_a_waiter_learns_which_of_several_limits_holds_it_back() -> None:
    gpu = settle(LimitState("concurrency limit 'gpu'", 1, (), ("w3",)), at(0), LEASE).state
    warehouse = settle(full_warehouse(), at(0), LEASE).state
    position = blocking_limit([gpu, warehouse], "w3")
    assert position is not None
    assert position.message == "waiting for concurrency limit 'warehouse' (4/4 held; 3rd in line)"
    assert blocking_limit([gpu, warehouse], "nobody") is None


def test_several_limits_are_taken_in_one_global_order() -> None:
    assert acquisition_order(["warehouse", "gpu", "warehouse"]) == ("gpu", "warehouse")
    with pytest.raises(ValidationError, match="concurrency limit name"):
        acquisition_order(["gpu", "Bad Name"])


@pytest.mark.parametrize(
    ("n", "text"),
    [(1, "1st"), (2, "2nd"), (3, "3rd"), (4, "4th"), (11, "11th"), (12, "12th"), (13, "13th"),
     (21, "21st"), (22, "22nd"), (101, "101st"), (111, "111th")],
)  # fmt: skip
def test_ordinal(n: int, text: str) -> None:
    assert ordinal(n) == text


def test_lowering_a_limit_evicts_no_one_and_grants_nothing_until_below_it() -> None:
    state = LimitState(WAREHOUSE, 2, full_warehouse().holders, ("w1",))
    result = settle(state, at(0), LEASE)
    assert len(result.state.holders) == 4 and result.granted == ()
    for holder in ("h0", "h1", "h2"):
        state = release(result.state, holder)
        result = settle(state, at(0), LEASE)
    assert result.granted == (Holder("w1", at(30)),)


def test_a_limit_of_zero_pauses_everything() -> None:
    result = settle(LimitState(WAREHOUSE, 0, (), ("w1",)), at(0), LEASE)
    assert result.granted == () and result.state.waiters == ("w1",)


def test_skip_overflow_refuses_instead_of_queueing() -> None:
    label = "run limit of deployment 'nightly-etl'"
    state = LimitState(label, 1, (), ("run-1", "run-2", "run-3"), Overflow.SKIP)
    result = settle(state, at(0), LEASE)
    assert [h.holder_id for h in result.granted] == ["run-1"]
    assert result.refused == ("run-2", "run-3")
    assert result.state.waiters == ()


def test_request_and_release_are_idempotent() -> None:
    state = LimitState(WAREHOUSE, 1, (Holder("h", at(30)),), ("w",))
    assert request(state, "w") == state
    assert request(state, "h") == state
    assert request(state, "x").waiters == ("w", "x")
    assert release(release(state, "w"), "w").waiters == ()
    assert release(state, "h").holders == ()


def test_renew_extends_a_live_lease_and_refuses_a_lapsed_one() -> None:
    state = LimitState(WAREHOUSE, 1, (Holder("h", at(30)),))
    renewed = renew(state, "h", at(20), LEASE)
    assert renewed is not None and renewed.holders == (Holder("h", at(50)),)
    assert renew(state, "h", at(30), LEASE) is None  # expired: the owner must ask again
    assert renew(state, "stranger", at(0), LEASE) is None
    # A renewal never shortens a lease.
    longer = LimitState(WAREHOUSE, 1, (Holder("h", at(100)),))
    assert renew(longer, "h", at(0), LEASE) == longer


def test_duplicate_rows_are_never_counted_twice() -> None:
    state = LimitState(WAREHOUSE, 2, (Holder("h", at(30)), Holder("h", at(30))), ("h", "w", "w"))
    result = settle(state, at(0), LEASE)
    assert [h.holder_id for h in result.state.holders] == ["h", "w"]
    assert result.state.waiters == ()


@pytest.mark.parametrize("bad", ["", "Warehouse", "has space", "-x", "x" * 64, "a/b"])
def test_bad_limit_names_are_refused(bad: str) -> None:
    with pytest.raises(ValidationError, match="concurrency limit name"):
        validate_name(bad)


def test_bounds_are_checked() -> None:
    validate_name("warehouse")
    validate_name("gpu.a100:eu-1")
    for bad_limit in (-1, 10_001, True):
        with pytest.raises(ValidationError, match="between 0 and 10000"):
            validate_limit(bad_limit)
    for bad_lease in (dt.timedelta(0), dt.timedelta(hours=2)):
        with pytest.raises(ValidationError, match="lease must last"):
            validate_lease(bad_lease)
    with pytest.raises(ValidationError, match="holder id"):
        request(LimitState(WAREHOUSE, 1), "")
    with pytest.raises(ValidationError, match="holder id"):
        request(LimitState(WAREHOUSE, 1), "x" * 201)


IDS = st.sampled_from([f"job-{i}" for i in range(7)])


class LimitMachine(RuleBasedStateMachine):
    """The control plane's stored limit plus what each owner believes it holds.

    Owners may be killed (they stop renewing and never release), releases and renewals
    interleave with time passing, and the control plane settles after every change. An owner
    believes it holds a slot from its grant until it releases it or its lease runs out
    unrenewed; at no moment may more than N owners believe so, and the stored live holders
    never exceed N either.
    """

    @initialize(
        limit=st.integers(min_value=0, max_value=3),
        overflow=st.sampled_from(list(Overflow)),
    )
    def start(self, limit: int, overflow: Overflow) -> None:
        self.now = T0
        self.state = LimitState(WAREHOUSE, limit, overflow=overflow)
        self.believed: dict[str, dt.datetime] = {}  # owner -> lease end it was told
        self.sequence: dict[str, int] = {}
        self.counter = 0
        self.killed: set[str] = set()

    def _settle(self) -> None:
        result = settle(self.state, self.now, LEASE)
        granted = [h.holder_id for h in result.granted]
        # Never overtaking: grants follow request order, and precede everyone still waiting.
        order = [self.sequence[g] for g in granted]
        assert order == sorted(order)
        if granted:
            assert all(self.sequence[w] > max(order) for w in result.state.waiters)
        for holder in result.granted:
            self.believed[holder.holder_id] = holder.expires_at
        self.state = result.state
        # After a settlement, anyone still waiting waits because the limit is full of live
        # leases (a lapsed lease never keeps anyone waiting).
        if self.state.waiters:
            live = [h for h in self.state.holders if h.expires_at > self.now]
            assert len(live) >= self.state.limit
            assert self.state.overflow is Overflow.QUEUE

    @rule(owner=IDS)
    def ask(self, owner: str) -> None:
        if owner in self.killed:
            return
        if owner not in self.state.waiters and owner not in self.believed:
            self.counter += 1
            self.sequence[owner] = self.counter
        self.state = request(self.state, owner)
        self._settle()

    @rule(owner=IDS)
    def give_back(self, owner: str) -> None:
        if owner in self.killed:
            return
        self.believed.pop(owner, None)
        self.state = release(self.state, owner)
        self._settle()

    @rule(owner=IDS)
    def heartbeat(self, owner: str) -> None:
        if owner in self.killed or owner not in self.believed:
            return
        renewed = renew(self.state, owner, self.now, LEASE)
        if renewed is None:
            # The control plane says the slot is gone: the owner stops using it.
            self.believed.pop(owner)
        else:
            self.state = renewed
            self.believed[owner] = next(
                h.expires_at for h in renewed.holders if h.holder_id == owner
            )

    @rule(owner=IDS)
    def kill(self, owner: str) -> None:
        # The owner's agent dies or is cut off: no release, no more heartbeats, no new
        # requests. It may still be working until its lease end (the worst case), which is
        # exactly how long the control plane keeps its slot.
        self.killed.add(owner)

    @rule(seconds=st.integers(min_value=0, max_value=45))
    def time_passes(self, seconds: int) -> None:
        self.now += dt.timedelta(seconds=seconds)
        # An owner whose lease ran out unrenewed stops using the slot.
        self.believed = {o: end for o, end in self.believed.items() if end > self.now}

    @rule()
    def sweep(self) -> None:
        # The dispatcher's timer: settles without any request (leases lapse between sweeps).
        self._settle()

    @invariant()
    def never_more_than_the_limit(self) -> None:
        live = [h for h in self.state.holders if h.expires_at > self.now]
        assert len(live) <= self.state.limit
        assert len({h.holder_id for h in self.state.holders}) == len(self.state.holders)
        believers = [o for o, end in self.believed.items() if end > self.now]
        assert len(believers) <= self.state.limit


LimitMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestLimitMachine = LimitMachine.TestCase
