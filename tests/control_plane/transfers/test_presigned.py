"""Presigned URLs through the transfer broker (decision 0020, "Presigned URLs"), on a real
store with the registry's real sessions, the agents played by tasks as in ``test_broker``.

Proves that the producer is told whether the consumer accepts a URL, that a URL chunk is
handed on only as the first and only chunk of a transfer the consumer accepted it for (a
malformed one fails the transfer), that the transfer is recorded with method ``presigned``
and the bytes from its offset, that residency refuses before any producer is asked, and that
the URL (a bearer credential) is in no row, audit record or log line.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select

from control_plane.store.db import Store
from control_plane.store.models import AuditRecordRow, EnvironmentRow, TransferRow
from control_plane.transfers.broker import Chunk, PresignableServe
from control_plane.transfers.relay import MAX_URL_LENGTH
from meridian.core.errors import ConflictError, ValidationError
from meridian.core.residency import ResidencyRefused
from tests.control_plane.transfers.test_broker import (
    DATA,
    REF,
    World,
    make_world,
    pieces,
    run,
    transfers,
)
from tests.control_plane.usecases.helpers import T0
from tests.support.deadlines import DEADLINE_S

SECRET = "X-Amz-Signature=0123456789abcdef-very-secret"
URL = f"https://acme-results.s3.amazonaws.com/runs/r/extract/1/result?{SECRET}"


@pytest.fixture
def world(store: Store) -> World:
    return make_world(store)


async def asked(w: World) -> PresignableServe:
    frame = await asyncio.wait_for(w.producer.outbox.get(), DEADLINE_S)
    assert isinstance(frame, PresignableServe), frame
    return frame


async def one(chunk: Chunk, *more: Chunk) -> AsyncIterator[Chunk]:
    yield chunk
    for c in more:
        yield c


def url_chunk(transfer_id: str, offset: int = 0, **changes: object) -> Chunk:
    chunk = Chunk(
        offset,
        b"",
        transfer_id,
        REF.size,
        REF.sha256,
        presigned_url=URL,
        presigned_url_ttl_s=300,
    )
    return dataclasses.replace(chunk, **changes)  # type: ignore[arg-type]


async def consume(w: World, offset: int = 0, *, accept: bool = True) -> list[Chunk]:
    return [
        c
        async for c in w.broker.fetch_for_agent(
            "g1",
            w.attempt.id,
            w.attempt.fencing_token,
            REF.to_json(),
            offset,
            accept_presigned_url=accept,
        )
    ]


def everything_recorded(store: Store) -> str:
    """Every column of every transfer row and every audit record, as one text."""

    def read(session: object) -> str:
        rows = [
            *session.scalars(select(TransferRow)),  # type: ignore[attr-defined]
            *session.scalars(select(AuditRecordRow)),  # type: ignore[attr-defined]
        ]
        return json.dumps(
            [{c.name: str(getattr(r, c.name)) for c in r.__table__.columns} for r in rows]
        )

    return store.run_sync(read)


@pytest.mark.parametrize("offset", [0, 1024 * 1024 + 7])
def test_a_url_is_handed_on_and_recorded_as_presigned_without_the_url(
    world: World, offset: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    async def scenario() -> None:
        consumer = asyncio.ensure_future(consume(world, offset))
        request = await asked(world)
        assert request.presigned_url_allowed and request.offset == offset
        await world.broker.push("a1", one(url_chunk(request.transfer_id, offset)))
        [chunk] = await consumer
        assert (chunk.presigned_url, chunk.presigned_url_ttl_s, chunk.data) == (URL, 300, b"")
        assert (chunk.offset, chunk.total_size, chunk.sha256) == (offset, REF.size, REF.sha256)
        assert SECRET not in repr(chunk)

    run(scenario)
    [row] = transfers(world.store)
    assert (row.state, row.method, row.bytes, row.error) == (
        "COMPLETED",
        "presigned",
        REF.size - offset,
        "",
    )
    recorded = everything_recorded(world.store)
    assert "result.transferred" in recorded and SECRET not in recorded
    assert SECRET not in caplog.text


def test_a_consumer_that_does_not_accept_urls_is_relayed_and_refuses_a_url(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    async def scenario() -> None:
        consumer = asyncio.ensure_future(consume(world, accept=False))
        request = await asked(world)
        assert not request.presigned_url_allowed
        with pytest.raises(ValidationError, match="did not accept") as refused:
            await world.broker.push("a1", one(url_chunk(request.transfer_id)))
        assert SECRET not in str(refused.value)
        with pytest.raises(ConflictError, match="pushed a bad stream"):
            await consumer
        # The next ask, relayed as ever.
        relayed = asyncio.ensure_future(consume(world, accept=False))
        again = await asked(world)
        await world.broker.push("a1", pieces(DATA, again.transfer_id))
        assert b"".join(c.data for c in await relayed) == DATA

    run(scenario)
    failed, relayed = transfers(world.store)
    assert (failed.state, failed.method) == ("FAILED", "relay")
    assert (relayed.state, relayed.method, relayed.bytes) == ("COMPLETED", "relay", len(DATA))
    assert SECRET not in everything_recorded(world.store) and SECRET not in caplog.text


def _not_alone(transfer_id: str) -> AsyncIterator[Chunk]:
    return one(url_chunk(transfer_id), Chunk(0, DATA[:10]))


def _after_bytes(transfer_id: str) -> AsyncIterator[Chunk]:
    return one(
        Chunk(0, DATA[:10], transfer_id, REF.size, REF.sha256),
        dataclasses.replace(url_chunk(""), offset=10),
    )


MALFORMED = {
    "followed by bytes": (_not_alone, "only chunk"),
    "after bytes": (_after_bytes, "first and only"),
    "with bytes": (lambda t: one(url_chunk(t, data=b"x")), "comes alone"),
    "another object": (lambda t: one(url_chunk(t, sha256="0" * 64)), "describes"),
    "another offset": (lambda t: one(url_chunk(t, offset=5)), "describes"),
    "not http": (lambda t: one(url_chunk(t, presigned_url="file:///etc/passwd")), "http"),
    "no host": (lambda t: one(url_chunk(t, presigned_url="https:///x?" + SECRET)), "host"),
    "too long": (
        lambda t: one(url_chunk(t, presigned_url=URL + "a" * MAX_URL_LENGTH)),
        "longer than",
    ),
    "no lifetime": (lambda t: one(url_chunk(t, presigned_url_ttl_s=0)), "valid for"),
    "too long-lived": (lambda t: one(url_chunk(t, presigned_url_ttl_s=86400)), "valid for"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_url_chunk_fails_the_transfer_without_quoting_it(
    world: World, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    push, why = MALFORMED[case]

    async def scenario() -> None:
        consumer = asyncio.ensure_future(consume(world))
        request = await asked(world)
        with pytest.raises(ValidationError, match=why) as refused:
            await world.broker.push("a1", push(request.transfer_id))
        assert SECRET not in str(refused.value)
        with pytest.raises(ConflictError, match="pushed a bad stream"):
            await consumer

    run(scenario)
    [row] = transfers(world.store)
    assert row.state == "FAILED" and row.method == "relay"
    assert SECRET not in everything_recorded(world.store) and SECRET not in caplog.text


def test_residency_refuses_before_any_producer_is_asked_for_a_url(world: World) -> None:
    world.store.run_sync(
        lambda s: s.add(
            EnvironmentRow(name="aws-demo", residency="cloud=aws", updated_at=T0, updated_by="t")
        )
    )

    async def scenario() -> None:
        with pytest.raises(ResidencyRefused, match="may only be read"):
            await consume(world)
        assert world.producer.outbox.empty()  # no ServeResult: no URL was ever made

    run(scenario)
    assert transfers(world.store) == []
