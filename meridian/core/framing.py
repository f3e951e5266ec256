"""The framing of the agent's pipes to its local workers (warm step workers,
``meridian.stepworker``; the hosted runners' fork server, ``meridian.flowzygote``): each
message is a 4-byte big-endian length and a JSON object of at most ``MAX_MESSAGE_BYTES``.

The workers read their end synchronously (``meridian.stepworker.read_frame``, straight into a
buffer they can wipe); the agent reads its ends on its event loop with :func:`read_message`.
"""

from __future__ import annotations

import json
import struct
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the workers import this module; asyncio stays out of their start-up
    import asyncio

HEADER = struct.Struct(">I")
MAX_MESSAGE_BYTES = 2 * 1024 * 1024  # both directions


class FramingError(ValueError):
    """The other end broke the framing (the message says how); its pipe is of no further use."""


def encode(message: Any) -> bytes:
    """``message`` (JSON-serialisable) framed; FramingError when it exceeds the bound."""
    body = json.dumps(message).encode("utf-8")
    if len(body) > MAX_MESSAGE_BYTES:
        raise FramingError(f"a message of {len(body)} bytes exceeds {MAX_MESSAGE_BYTES}")
    return HEADER.pack(len(body)) + body


async def read_message(stream: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next message on ``stream``, or None at the end of its output."""
    import asyncio

    try:
        header = await stream.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise FramingError("its output ended inside a message") from None
        return None
    (size,) = HEADER.unpack(header)
    if size > MAX_MESSAGE_BYTES:
        raise FramingError(f"it sent a message of {size} bytes (at most {MAX_MESSAGE_BYTES})")
    try:
        value = json.loads(await stream.readexactly(size))
    except asyncio.IncompleteReadError:
        raise FramingError("its output ended inside a message") from None
    except ValueError as exc:
        raise FramingError(f"it sent malformed JSON: {exc}") from None
    if not isinstance(value, dict):
        raise FramingError("it sent a message that is not a JSON object")
    return value
