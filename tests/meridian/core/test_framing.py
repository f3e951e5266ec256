"""The worker-pipe framing (``meridian.core.framing``): what a worker writes with
``meridian.stepworker.write_message`` the agent reads back with ``read_message``, and every way
the other end can break the framing is a FramingError, never a hang or a partial value."""

from __future__ import annotations

import asyncio
import os

import pytest

from meridian import stepworker
from meridian.core.framing import HEADER, MAX_MESSAGE_BYTES, FramingError, encode, read_message


async def read_all(data: bytes) -> list[dict[str, object]]:
    stream = asyncio.StreamReader()
    stream.feed_data(data)
    stream.feed_eof()
    messages = []
    while (message := await read_message(stream)) is not None:
        messages.append(message)
    return messages


def test_a_workers_messages_read_back_on_the_agents_loop() -> None:
    read_fd, write_fd = os.pipe()
    try:
        stepworker.write_message(write_fd, {"op": "done", "n": 1})
        stepworker.write_message(write_fd, {"op": "done", "text": "é" * 10})
        os.close(write_fd)
        data = b""
        while chunk := os.read(read_fd, 65536):
            data += chunk
    finally:
        os.close(read_fd)
    assert asyncio.run(read_all(data)) == [{"op": "done", "n": 1}, {"op": "done", "text": "é" * 10}]
    assert asyncio.run(read_all(encode({"a": [1, 2]}))) == [{"a": [1, 2]}]


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (HEADER.pack(10) + b'{"a":', "ended inside a message"),
        (HEADER.pack(4)[:2], "ended inside a message"),
        (HEADER.pack(MAX_MESSAGE_BYTES + 1), f"at most {MAX_MESSAGE_BYTES}"),
        (HEADER.pack(3) + b"[1]", "not a JSON object"),
        (HEADER.pack(3) + b"{x}", "malformed JSON"),
    ],
    ids=["cut-body", "cut-header", "oversized", "not-an-object", "not-json"],
)
def test_a_broken_framing_is_refused(data: bytes, why: str) -> None:
    with pytest.raises(FramingError, match=why):
        asyncio.run(read_all(data))


def test_a_message_over_the_bound_is_not_encoded() -> None:
    with pytest.raises(FramingError, match="exceeds"):
        encode({"env": "x" * MAX_MESSAGE_BYTES})
