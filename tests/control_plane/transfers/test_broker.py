"""The transfer broker on a real store (SQLite, and PostgreSQL when configured) with the
registry's real sessions; the two agents are played by tasks that read the producer's outbox
and push, and that consume the relayed chunks.

Proves who may fetch what (the attempt's holder and token, the attempt's listed inputs,
recorded results, residency), that every byte arrives and is counted, that wrong bytes never
arrive whole, that stalls and cuts fail the transfer with why, that a resumed transfer sends
only the rest, and that each transfer ends as a ledger row with its audit record.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import datetime as dt
import hashlib
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import select

from control_plane.scheduler.registry import AgentRegistry, AgentSession, ServeResultOut
from control_plane.store.db import Store
from control_plane.store.models import (
    AgentRow,
    AttemptRow,
    AuditRecordRow,
    EnvironmentRow,
    StepRunRow,
    TransferRow,
)
from control_plane.store.tx import acting_as
from control_plane.transfers.broker import Chunk, TransferBroker, TransferUnavailable
from control_plane.transfers.relay import Relay, ResultCorrupt
from control_plane.usecases.agents import ConnectedAgent
from control_plane.usecases.transfers import list_transfers
from meridian.core.errors import ConflictError, LimitExceeded, PermissionDenied, ValidationError
from meridian.core.residency import ResidencyRefused
from meridian.core.resultref import ResultRef
from tests.control_plane.usecases.helpers import T0, attempts, new_run, schedule, submit
from tests.support.deadlines import DEADLINE_S
from tests.support.polling import apoll_until

MiB = 1024 * 1024
DATA = os.urandom(3 * MiB + 1234)
REF = ResultRef(
    environment="aws-demo",
    store="s3-main",
    uri="s3://acme-results/runs/r/extract/1/result",
    size=len(DATA),
    sha256=hashlib.sha256(DATA).hexdigest(),
    serializer="pickle",
)


@dataclasses.dataclass
class World:
    store: Store
    run_id: str
    attempt: AttemptRow  # the consumer's attempt, held by g1 (gcp-demo)
    registry: AgentRegistry
    producer: AgentSession  # a1 (aws-demo), advertising s3-main
    relay: Relay
    broker: TransferBroker


def session(agent_id: str, environment: str, stores: tuple[str, ...] = ()) -> AgentSession:
    labels = {"cloud": environment.split("-")[0]}
    agent = ConnectedAgent(agent_id, agent_id, environment, labels, frozenset(), 2, 0, False, 0)
    s = AgentSession(agent, f"session-{agent_id}")
    s.result_stores = stores
    return s


def make_world(store: Store, ref: ResultRef = REF, *, listed: bool = True, **relay: Any) -> World:
    run_id = new_run(store)
    produced = submit(store, run_id, "extract#1")
    consumer = submit(store, run_id, "load#1", target="cloud=gcp")

    def record(session: Any) -> None:
        step = session.get(StepRunRow, produced)
        step.result_ref_json, step.result_ref_sha256 = ref.to_json(), ref.sha256
        if listed:
            session.get(StepRunRow, consumer).input_refs_json = json.dumps([ref.to_value()])

    store.run_sync(record)
    schedule(store)
    attempt = next(a for a in attempts(store, consumer) if a.agent_id == "g1")
    registry = AgentRegistry()
    producer = session("a1", "aws-demo", ("s3-main",))
    registry.add(producer)
    registry.add(session("g1", "gcp-demo"))
    relay_ = Relay(**relay)
    return World(
        store, run_id, attempt, registry, producer, relay_, TransferBroker(store, registry, relay_)
    )


@pytest.fixture
def world(store: Store) -> World:
    return make_world(store)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), DEADLINE_S))


async def pieces(
    data: bytes, transfer_id: str, offset: int = 0, *, sha256: str = REF.sha256, size: int = MiB
) -> AsyncIterator[Chunk]:
    """What a producing agent pushes: the object from ``offset`` in chunks of ``size``."""
    first = True
    for start in range(offset, max(len(data), offset + 1), size):
        piece = data[start : start + size]
        if first:
            yield Chunk(start, piece, transfer_id, len(data), sha256)
        else:
            yield Chunk(start, piece)
        first = False


async def serve_request(w: World) -> ServeResultOut:
    frame = await asyncio.wait_for(w.producer.outbox.get(), DEADLINE_S)
    assert isinstance(frame, ServeResultOut), frame
    return frame


async def produce(w: World, data: bytes = DATA, agent_id: str = "a1") -> None:
    """Agent a1 answers the next ServeResult with ``data``."""
    asked = await serve_request(w)
    assert ResultRef.from_json(asked.ref_json) == REF
    await w.broker.push(agent_id, pieces(data, asked.transfer_id, asked.offset))


async def consume(w: World, offset: int = 0, ref: ResultRef = REF) -> tuple[bytes, list[Chunk]]:
    chunks = [
        c
        async for c in w.broker.fetch_for_agent(
            "g1", w.attempt.id, w.attempt.fencing_token, ref.to_json(), offset
        )
    ]
    return b"".join(c.data for c in chunks), chunks


def transfers(store: Store) -> list[TransferRow]:
    return store.run_sync(
        lambda s: list(s.scalars(select(TransferRow).order_by(TransferRow.started_at)))
    )


def audit_records(store: Store, action: str) -> list[dict[str, Any]]:
    rows = store.run_sync(
        lambda s: list(s.scalars(select(AuditRecordRow).where(AuditRecordRow.action == action)))
    )
    return [{"actor": r.actor, "subject": r.subject, **json.loads(r.details)} for r in rows]


def test_every_byte_is_relayed_and_the_transfer_is_recorded_with_its_audit_record(
    world: World,
) -> None:
    async def scenario() -> None:
        producer = asyncio.ensure_future(produce(world))
        data, chunks = await consume(world)
        await producer
        assert data == DATA
        first = chunks[0]
        assert (first.total_size, first.sha256, first.offset) == (REF.size, REF.sha256, 0)
        assert all(len(c.data) <= MiB for c in chunks)

    run(scenario)
    [row] = transfers(world.store)
    assert (row.state, row.bytes, row.size, row.error) == ("COMPLETED", len(DATA), len(DATA), "")
    assert (row.from_environment, row.to_environment, row.store) == (
        "aws-demo",
        "gcp-demo",
        "s3-main",
    )
    assert (row.flow_run_id, row.step_key, row.attempt_id) == (
        world.run_id,
        "load#1",
        world.attempt.id,
    )
    assert (row.producer_run_id, row.producer_step_key, row.requested_by) == (
        world.run_id,
        "extract#1",
        "g1",
    )
    assert row.ended_at is not None
    [record] = audit_records(world.store, "result.transferred")
    assert record["actor"] == "agent:g1" and record["subject"] == world.run_id
    assert record["bytes"] == len(DATA) and record["sha256"] == REF.sha256
    assert (record["from_environment"], record["to_environment"]) == ("aws-demo", "gcp-demo")
    assert (record["step_key"], record["attempt_id"], record["store"]) == (
        "load#1",
        world.attempt.id,
        "s3-main",
    )


def test_the_producer_waits_while_the_consumer_is_slow(store: Store) -> None:
    """Backpressure end to end: the producer is never more than the pipe ahead."""
    content = DATA * 4
    big = dataclasses.replace(REF, size=len(content), sha256=hashlib.sha256(content).hexdigest())
    w = make_world(store, big)

    async def scenario() -> None:
        pushed = 0

        async def counted(transfer_id: str) -> AsyncIterator[Chunk]:
            nonlocal pushed
            async for chunk in pieces(content, transfer_id, sha256=big.sha256):
                pushed += 1
                yield chunk

        async def producer() -> None:
            asked = await serve_request(w)
            await w.broker.push("a1", counted(asked.transfer_id))

        task = asyncio.ensure_future(producer())
        stream = w.broker.fetch_for_agent(
            "g1", w.attempt.id, w.attempt.fencing_token, big.to_json(), 0
        )
        taken = [await anext(stream) for _ in range(2)]
        depth = w.relay.depth
        # Two taken, `depth` queued, one in the producer's hands waiting for room.
        await apoll_until(lambda: pushed >= 2 + depth + 1, message="the producer to fill the pipe")
        for _ in range(100):
            await asyncio.sleep(0)
        assert pushed == 2 + depth + 1 and not task.done()
        rest = [c async for c in stream]
        await task
        assert b"".join(c.data for c in taken + rest) == content

    run(scenario)


def test_a_reference_the_attempt_does_not_take_is_refused_and_audited(store: Store) -> None:
    w = make_world(store, listed=False)

    async def scenario() -> None:
        with pytest.raises(PermissionDenied, match="not among the inputs of attempt"):
            await consume(w)

    run(scenario)
    assert transfers(store) == [] and w.producer.outbox.empty()
    [record] = audit_records(store, "result.transfer_refused")
    assert record["actor"] == "agent:g1" and record["uri"] == REF.uri


def test_a_forged_reference_no_step_recorded_is_refused(store: Store) -> None:
    forged = dataclasses.replace(REF, uri="s3://acme-results/runs/other/secret/1/result")
    w = make_world(store)

    def list_forged(session: Any) -> None:
        step = session.get(StepRunRow, w.attempt.step_run_id)
        step.input_refs_json = json.dumps([REF.to_value(), forged.to_value()])

    store.run_sync(list_forged)

    async def scenario() -> None:
        with pytest.raises(PermissionDenied, match="was not recorded by any step run"):
            await consume(w, ref=forged)

    run(scenario)
    assert transfers(store) == []
    assert len(audit_records(store, "result.transfer_refused")) == 1


def test_only_the_holder_of_the_attempt_with_its_current_token_may_fetch(world: World) -> None:
    async def scenario() -> None:
        with pytest.raises(PermissionDenied, match="holds no attempt"):
            [
                c
                async for c in world.broker.fetch_for_agent(
                    "a1", world.attempt.id, world.attempt.fencing_token, REF.to_json(), 0
                )
            ]
        with pytest.raises(ConflictError, match="fencing token"):
            [
                c
                async for c in world.broker.fetch_for_agent(
                    "g1", world.attempt.id, world.attempt.fencing_token + 1, REF.to_json(), 0
                )
            ]
        with pytest.raises(ValidationError, match="outside the result"):
            await consume(world, offset=REF.size + 1)

    run(scenario)
    assert transfers(world.store) == []


def test_a_residency_rule_the_consumer_does_not_satisfy_refuses_and_is_audited(
    world: World,
) -> None:
    world.store.run_sync(
        lambda s: s.add(
            EnvironmentRow(name="aws-demo", residency="cloud=aws", updated_at=T0, updated_by="t")
        )
    )

    async def scenario() -> None:
        with pytest.raises(ResidencyRefused, match="results of environment 'aws-demo' may only"):
            await consume(world)

    run(scenario)
    [record] = audit_records(world.store, "result.transfer_refused")
    assert "cloud=aws" in record["reason"]


def test_a_pinned_labels_only_rule_lets_only_an_agent_whose_token_pinned_the_label_fetch(
    world: World,
) -> None:
    rule = EnvironmentRow(
        name="aws-demo",
        residency="cloud=gcp",
        residency_pinned_only=True,
        updated_at=T0,
        updated_by="t",
    )
    world.store.run_sync(lambda s: s.add(rule))

    async def refused() -> None:
        # g1 claims cloud=gcp, but its token pinned nothing.
        with pytest.raises(ResidencyRefused, match=r"pinned labels only"):
            await consume(world)

    run(refused)

    def pin(session: Any) -> None:
        session.get(AgentRow, "g1").pinned_labels = {"cloud": "gcp"}

    world.store.run_sync(pin)

    async def allowed() -> None:
        producer = asyncio.ensure_future(produce(world))
        data, _ = await consume(world)
        await producer
        assert data == DATA

    run(allowed)
    assert [row.state for row in transfers(world.store)] == ["COMPLETED"]


def test_no_connected_producer_with_the_store_is_unavailable_naming_both(world: World) -> None:
    world.producer.result_stores = ("other-store",)

    async def scenario() -> None:
        with pytest.raises(
            TransferUnavailable, match="environment 'aws-demo' has result store 's3-main'"
        ):
            await consume(world)

    run(scenario)
    assert transfers(world.store) == []


def test_an_agent_that_was_not_asked_cannot_push_the_transfer(world: World) -> None:
    async def scenario() -> None:
        consumer = asyncio.ensure_future(consume(world))
        asked = await serve_request(world)
        with pytest.raises(PermissionDenied, match="asked of another agent"):
            await world.broker.push("g1", pieces(b"evil", asked.transfer_id))
        await world.broker.push("a1", pieces(DATA, asked.transfer_id))
        data, _ = await consumer
        assert data == DATA

    run(scenario)
    assert transfers(world.store)[0].state == "COMPLETED"


def test_a_producer_that_never_pushes_fails_the_transfer(store: Store) -> None:
    w = make_world(store, start_timeout_s=0.05)

    async def scenario() -> None:
        with pytest.raises(TransferUnavailable, match="agent a1 did not start sending"):
            await consume(w)

    run(scenario)
    [row] = transfers(store)
    assert row.state == "FAILED" and "did not start sending" in row.error and row.bytes == 0
    [record] = audit_records(store, "result.transfer_failed")
    assert record["error"] == row.error


def test_bytes_that_do_not_match_the_digest_never_arrive_whole(world: World) -> None:
    wrong = bytes(len(DATA))

    async def scenario() -> None:
        consumer = asyncio.ensure_future(consume(world))
        asked = await serve_request(world)
        with pytest.raises(ValidationError, match="hash to"):
            await world.broker.push("a1", pieces(wrong, asked.transfer_id))
        # Corrupt: the consumer fails for good (DATA_LOSS) instead of relaying it again.
        with pytest.raises(ResultCorrupt, match="the stored object is corrupt"):
            await consumer

    run(scenario)
    [row] = transfers(world.store)
    assert row.state == "FAILED" and row.bytes < len(DATA)


def test_a_producer_whose_store_read_finds_a_digest_mismatch_fails_the_consumer_as_corrupt(
    world: World,
) -> None:
    async def mismatching(transfer_id: str) -> AsyncIterator[Chunk]:
        yield Chunk(0, DATA[:MiB], transfer_id, len(DATA), REF.sha256)
        yield Chunk(MiB, b"", error="DigestMismatch: the object has other bytes")

    async def scenario() -> None:
        consumer = asyncio.ensure_future(consume(world))
        asked = await serve_request(world)
        with pytest.raises(ValidationError, match="DigestMismatch"):
            await world.broker.push("a1", mismatching(asked.transfer_id))
        with pytest.raises(ResultCorrupt, match="DigestMismatch: the object has other bytes"):
            await consumer

    run(scenario)


def test_a_producer_that_stops_mid_way_is_a_retryable_disconnect(world: World) -> None:
    async def cut(transfer_id: str) -> AsyncIterator[Chunk]:
        async for chunk in pieces(DATA, transfer_id):
            yield chunk
            return  # a SIGKILLed agent's call ends so, after its first chunk

    async def scenario() -> None:
        consumer = asyncio.ensure_future(consume(world))
        asked = await serve_request(world)
        with pytest.raises(TransferUnavailable):
            await world.broker.push("a1", cut(asked.transfer_id))
        with pytest.raises(TransferUnavailable, match="disconnected or stopped after"):
            await consumer

    run(scenario)
    [row] = transfers(world.store)
    assert row.state == "FAILED"
    assert f"producing agent a1 disconnected or stopped after {MiB} of {len(DATA)} bytes" in (
        row.error
    )
    assert "bad stream" not in row.error


def test_a_resumed_transfer_sends_only_the_rest(world: World) -> None:
    offset = MiB + 17

    async def scenario() -> None:
        producer = asyncio.ensure_future(produce(world))
        data, chunks = await consume(world, offset=offset)
        await producer
        assert data == DATA[offset:] and chunks[0].offset == offset

    run(scenario)
    [row] = transfers(world.store)
    assert row.state == "COMPLETED" and row.bytes == len(DATA) - offset


def test_a_consumer_that_goes_away_fails_the_transfer_and_stops_the_producer(
    world: World,
) -> None:
    async def scenario() -> None:
        stream = world.broker.fetch_for_agent(
            "g1", world.attempt.id, world.attempt.fencing_token, REF.to_json(), 0
        )
        first = asyncio.ensure_future(anext(stream))
        asked = await serve_request(world)
        pushing = asyncio.ensure_future(world.broker.push("a1", pieces(DATA, asked.transfer_id)))
        assert (await first).data
        await stream.aclose()  # the consumer's call was cancelled
        with pytest.raises(TransferUnavailable, match="consumer's call ended"):
            await pushing
        await apoll_until(
            lambda: transfers(world.store)[0].state == "FAILED", message="the row to fail"
        )

    run(scenario)
    row = transfers(world.store)[0]
    assert 0 < row.bytes < len(DATA)


def test_a_client_download_is_relayed_and_recorded_under_its_principal(world: World) -> None:
    async def scenario() -> None:
        producer = asyncio.ensure_future(produce(world))
        chunks = [
            c
            async for c in world.broker.fetch_for_client("token:abc", world.run_id, "extract#1", 0)
        ]
        await producer
        assert b"".join(c.data for c in chunks) == DATA

    def as_principal() -> None:
        acting_as("token:abc")  # what the API edge does for an authenticated caller
        run(scenario)

    contextvars.copy_context().run(as_principal)
    [row] = transfers(world.store)
    assert (row.to_environment, row.requested_by, row.attempt_id, row.state) == (
        "",
        "token:abc",
        None,
        "COMPLETED",
    )
    assert audit_records(world.store, "result.transferred")[0]["actor"] == "token:abc"


def test_a_client_download_of_a_result_under_a_residency_rule_is_refused(world: World) -> None:
    world.store.run_sync(
        lambda s: s.add(
            EnvironmentRow(name="aws-demo", residency="region=eu", updated_at=T0, updated_by="t")
        )
    )

    async def scenario() -> None:
        with pytest.raises(ResidencyRefused, match=r"'region=eu'.*outside every environment"):
            [
                c
                async for c in world.broker.fetch_for_client(
                    "token:abc", world.run_id, "extract#1", 0
                )
            ]

    run(scenario)
    assert transfers(world.store) == []
    assert len(audit_records(world.store, "result.transfer_refused")) == 1


def test_a_step_without_a_stored_result_has_nothing_to_download(world: World) -> None:
    async def scenario() -> None:
        with pytest.raises(ConflictError, match="no result kept at its site"):
            [c async for c in world.broker.fetch_for_client("token:abc", world.run_id, "load#1", 0)]

    run(scenario)


def test_transfers_beyond_the_per_agent_limit_are_refused(store: Store) -> None:
    w = make_world(store, per_agent=1)

    async def scenario() -> None:
        first = asyncio.ensure_future(consume(w))
        asked = await serve_request(w)
        with pytest.raises(LimitExceeded, match="g1 has 1 result transfers in flight"):
            await consume(w)
        await w.broker.push("a1", pieces(DATA, asked.transfer_id))
        await first

    run(scenario)


def test_listing_sums_completed_bytes_per_pair(world: World) -> None:
    async def scenario() -> None:
        for offset in (0, MiB):
            producer = asyncio.ensure_future(produce(world))
            await consume(world, offset=offset)
            await producer

    run(scenario)
    failed = {**_columns(transfers(world.store)[0]), "id": "x", "state": "FAILED", "bytes": 5}
    world.store.run_sync(lambda s: s.add(TransferRow(**failed)))
    listing = world.store.run_sync(lambda s: list_transfers(s, since=None, run_id="", limit=10))
    assert len(listing.transfers) == 3
    [total] = listing.totals
    assert (total.from_environment, total.to_environment) == ("aws-demo", "gcp-demo")
    # A failed transfer's bytes crossed too: they count as egress, not as a transfer.
    assert (total.bytes, total.transfers) == (2 * len(DATA) - MiB + 5, 2)
    other = world.store.run_sync(lambda s: list_transfers(s, since=None, run_id="nope", limit=10))
    assert other.transfers == [] and other.totals == []


def _columns(row: TransferRow) -> dict[str, Any]:
    return {c.key: getattr(row, c.key) for c in TransferRow.__table__.columns}


def test_transfers_a_previous_control_plane_left_running_end_as_failed(world: World) -> None:
    async def scenario() -> None:
        producer = asyncio.ensure_future(produce(world))
        await consume(world)
        await producer

    left = {**_columns_of_new(world), "id": "left-behind"}
    world.store.run_sync(lambda s: s.add(TransferRow(**left)))
    run(scenario)
    rows = {row.id: row for row in transfers(world.store)}
    assert rows["left-behind"].state == "FAILED"
    assert rows["left-behind"].error == "the control plane stopped during the transfer"
    assert [r["transfer_id"] for r in audit_records(world.store, "result.transfer_failed")] == [
        "left-behind"
    ]


def _columns_of_new(w: World) -> dict[str, Any]:
    """A RUNNING transfer that started before this control plane did."""
    return {
        "flow_run_id": w.run_id,
        "step_key": "load#1",
        "attempt_id": w.attempt.id,
        "from_environment": "aws-demo",
        "to_environment": "gcp-demo",
        "store": "s3-main",
        "uri": REF.uri,
        "sha256": REF.sha256,
        "size": REF.size,
        "bytes": 0,
        "state": "RUNNING",
        "error": "",
        "producer_run_id": w.run_id,
        "producer_step_key": "extract#1",
        "requested_by": "g1",
        "started_at": T0,
        "ended_at": None,
    }


def test_a_resume_after_a_control_plane_restart_credits_the_bytes_that_crossed_before(
    world: World,
) -> None:
    """The stopped control plane could not record what it had relayed; the consumer's resume
    offset says how much arrived, so the ledger still counts every byte that crossed."""
    interrupted = {
        **_columns_of_new(world),
        "id": "cut-by-restart",
        "state": "FAILED",
        "error": "the control plane stopped during the transfer",
        "ended_at": T0,
    }
    world.store.run_sync(lambda s: s.add(TransferRow(**interrupted)))
    offset = MiB + 17

    async def scenario() -> None:
        producer = asyncio.ensure_future(produce(world))
        data, _ = await consume(world, offset=offset)
        await producer
        assert data == DATA[offset:]

    run(scenario)
    rows = {row.id: row for row in transfers(world.store)}
    assert rows["cut-by-restart"].bytes == offset
    assert sum(row.bytes for row in rows.values()) == len(DATA)


def test_the_credit_counts_only_the_current_fetch(world: World) -> None:
    """An earlier complete download of the same object is another fetch: it does not cancel
    the credit of this one's interrupted row."""
    done_before = {
        **_columns_of_new(world), "id": "earlier-whole", "state": "COMPLETED",
        "bytes": len(DATA), "ended_at": T0,
    }  # fmt: skip
    interrupted = {
        **_columns_of_new(world), "id": "cut-by-restart", "state": "FAILED",
        "error": "the control plane stopped during the transfer", "ended_at": T0,
        "started_at": T0 + dt.timedelta(seconds=1),
    }  # fmt: skip
    world.store.run_sync(
        lambda s: s.add_all([TransferRow(**done_before), TransferRow(**interrupted)])
    )
    offset = MiB + 17

    async def scenario() -> None:
        producer = asyncio.ensure_future(produce(world))
        await consume(world, offset=offset)
        await producer

    run(scenario)
    rows = {row.id: row for row in transfers(world.store)}
    assert rows["cut-by-restart"].bytes == offset
