"""The open ``WatchRun`` stream of ``ControlClient.watch_run``/``watch_run_batches``."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import grpc

from meridian import _convert, models
from meridian.rpcerrors import _code

if TYPE_CHECKING:
    from meridian.client import ControlClient


class RunBatchStream(Iterator[list[models.RunUpdate]]):
    """The open batched ``WatchRun`` stream: iterate for lists of updates, ``cancel()`` to
    stop early. A server that does not batch sends one update per message: a list of one."""

    def __init__(self, call: Any, client: ControlClient) -> None:
        self._call = call
        self._client = client
        self._cancelled = False

    def __iter__(self) -> RunBatchStream:
        return self

    def __next__(self) -> list[models.RunUpdate]:
        try:
            message = next(self._call)
        except grpc.RpcError as exc:
            if self._cancelled and _code(exc) == grpc.StatusCode.CANCELLED:
                raise StopIteration from None
            raise self._client._map_error(exc) from None
        if message.batch:
            return [_convert.update_from_proto(m) for m in message.batch]
        return [_convert.update_from_proto(message)]

    def cancel(self) -> None:
        self._cancelled = True
        self._call.cancel()


class RunUpdateStream(Iterator[models.RunUpdate]):
    """The open ``WatchRun`` stream, one update at a time; ``cancel()`` to stop early."""

    def __init__(self, batches: RunBatchStream) -> None:
        self._batches = batches
        self._ready: collections.deque[models.RunUpdate] = collections.deque()

    def __iter__(self) -> RunUpdateStream:
        return self

    def __next__(self) -> models.RunUpdate:
        while not self._ready:
            self._ready.extend(next(self._batches))
        return self._ready.popleft()

    def cancel(self) -> None:
        self._batches.cancel()
