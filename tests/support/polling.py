"""Waiting until a condition holds: ``poll_until`` and its asyncio twin ``apoll_until``.

Every "loop until true or give up" in the tests goes through here, so each wait has the
same deadline (``DEADLINE_S``) and fails the same way: an AssertionError that says what was
awaited and what was last observed, instead of a bare "timed out".
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tests.support.deadlines import DEADLINE_S

T = TypeVar("T")

DEFAULT_INTERVAL_S = 0.05

Message = str | Callable[[], str]


def _failure(message: Message, timeout: float, last: object) -> AssertionError:
    # A callable message is rendered only on failure: it may be costly (process logs).
    text = message() if callable(message) else message
    return AssertionError(
        f"timed out after {timeout:g} s waiting for {text}; last observed: {last!r}"
    )


def poll_until(
    predicate: Callable[[], T],
    *,
    timeout: float = DEADLINE_S,
    interval: float = DEFAULT_INTERVAL_S,
    message: Message = "the condition",
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``predicate`` until it returns something truthy, and return that.

    ``predicate`` is always called at least once, and once more at the deadline, so a slow
    sleep never costs the last chance. Exceptions of the ``ignore`` types count as "not yet"
    (e.g. a server that is not listening yet) and are reported as the last observation.
    """
    end = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
        except ignore as exc:
            last = exc
        else:
            if value:
                return value
            last = value
        remaining = end - time.monotonic()
        if remaining <= 0:
            raise _failure(message, timeout, last)
        time.sleep(min(interval, remaining))


async def apoll_until(
    predicate: Callable[[], T | Awaitable[T]],
    *,
    timeout: float = DEADLINE_S,
    interval: float = DEFAULT_INTERVAL_S,
    message: Message = "the condition",
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """``poll_until`` for event-loop code: ``predicate`` may be sync or async, and the wait
    between calls yields to the loop (so the thing awaited can actually happen)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
        except ignore as exc:
            last = exc
        else:
            if value:
                return value  # type: ignore[return-value]
            last = value
        remaining = end - loop.time()
        if remaining <= 0:
            raise _failure(message, timeout, last)
        await asyncio.sleep(min(interval, remaining))
