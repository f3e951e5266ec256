"""The relay's pipe with plain asyncio: the bound holds while the consumer is slow, and a
failure on either side wakes the other with the reason."""

from __future__ import annotations

import asyncio

import pytest

from control_plane.transfers.relay import END, Pipe, PipeClosed, PipeSpec, Relay, TransferSlots
from meridian.core.errors import ConflictError, LimitExceeded, NotFound, PermissionDenied
from tests.support.deadlines import DEADLINE_S
from tests.support.polling import apoll_until

SPEC = PipeSpec("t-1", "producer", 20, "0" * 64, 0)


def run(scenario: object) -> None:
    asyncio.run(asyncio.wait_for(scenario, DEADLINE_S))  # type: ignore[arg-type]


def test_the_pipe_never_holds_more_than_its_depth_while_the_consumer_is_slow() -> None:
    async def scenario() -> None:
        pipe = Pipe(SPEC, depth=4)
        handed: list[int] = []
        peak = 0

        async def producer() -> None:
            nonlocal peak
            for i in range(20):
                await pipe.put(bytes([i]), timeout_s=DEADLINE_S)
                handed.append(i)
                peak = max(peak, pipe.queued)
            await pipe.put(END, timeout_s=DEADLINE_S)

        task = asyncio.ensure_future(producer())
        received = [await pipe.get(DEADLINE_S, "a chunk") for _ in range(3)]
        # The producer gets as far as the queue allows, and no further.
        await apoll_until(lambda: len(handed) >= 3 + 4, message="the producer to fill the pipe")
        for _ in range(50):
            await asyncio.sleep(0)
        assert len(handed) == 3 + 4 and pipe.queued == 4 and not task.done()
        while True:
            item = await pipe.get(DEADLINE_S, "a chunk")
            if item is END:
                break
            received.append(item)  # type: ignore[arg-type]
        await task
        assert received == [bytes([i]) for i in range(20)]
        assert peak <= 4

    run(scenario())


def test_a_consumer_that_gives_up_wakes_a_blocked_producer_with_the_reason() -> None:
    async def scenario() -> None:
        pipe = Pipe(SPEC, depth=1)
        await pipe.put(b"a", timeout_s=DEADLINE_S)
        blocked = asyncio.ensure_future(pipe.put(b"b", timeout_s=DEADLINE_S))
        await asyncio.sleep(0)
        assert not blocked.done()
        pipe.fail("the consumer went away")
        with pytest.raises(PipeClosed, match="the consumer went away"):
            await blocked
        assert pipe.queued == 0  # what was queued is dropped at once

    run(scenario())


def test_a_producer_failure_wakes_a_waiting_consumer_and_keeps_the_first_reason() -> None:
    async def scenario() -> None:
        pipe = Pipe(SPEC)
        waiting = asyncio.ensure_future(pipe.get(DEADLINE_S, "a chunk"))
        await asyncio.sleep(0)
        pipe.fail("bad digest", retryable=False)
        pipe.fail("a later reason")
        with pytest.raises(PipeClosed, match="bad digest") as caught:
            await waiting
        assert caught.value.retryable is False

    run(scenario())


def test_timeouts_close_the_pipe_saying_what_was_awaited() -> None:
    async def scenario() -> None:
        pipe = Pipe(SPEC, depth=1)
        with pytest.raises(PipeClosed, match=r"nobody sent within 0\.01 s"):
            await pipe.get(0.01, "nobody sent")
        stalled = Pipe(SPEC, depth=1)
        await stalled.put(b"a", timeout_s=1)
        with pytest.raises(PipeClosed, match=r"the consumer read nothing for 0\.01 s"):
            await stalled.put(b"b", timeout_s=0.01)

    run(scenario())


def test_a_completed_pipe_is_not_failed_afterwards() -> None:
    pipe = Pipe(SPEC)
    pipe.complete()
    pipe.fail("the consumer's call ended")
    assert pipe.failure is None and pipe.completed


def test_only_the_asked_agent_attaches_and_only_once() -> None:
    relay = Relay()
    with relay.open(SPEC) as pipe:
        with pytest.raises(PermissionDenied, match="asked of another agent"):
            relay.attach("t-1", "someone-else")
        assert relay.attach("t-1", "producer") is pipe
        with pytest.raises(ConflictError, match="being served already"):
            relay.attach("t-1", "producer")
    with pytest.raises(NotFound, match="not waiting for bytes"):
        relay.attach("t-1", "producer")
    assert pipe.failure is not None and pipe.finished.is_set()
    assert relay.slots.in_use("producer") == 0


def test_slots_bound_each_party_and_the_total() -> None:
    slots = TransferSlots(per_agent=2, total=3)
    slots.acquire("b")
    slots.acquire("b")
    with pytest.raises(LimitExceeded, match="b has 2 result transfers in flight"):
        slots.acquire("b")
    slots.acquire("c")
    with pytest.raises(LimitExceeded, match="relays 3 result transfers at once"):
        slots.acquire("d")
    slots.release("b")
    slots.acquire("d")
    assert slots.in_flight == 3 and slots.in_use("b") == 1
