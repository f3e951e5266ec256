"""The approvals a flow body waits for, resolved from the runner's watch stream.

``approve`` registers a waiter for its key before asking the control plane, so a decision
that arrives on the stream at any moment after that is delivered; decisions seen before
(on the stream) are kept, because a decision is final. ``close`` fails every waiter, present
and future, when nothing will be decided any more (the run was cancelled or ended, or its
stream is gone for good).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from meridian import models


class ApprovalWaiter:
    """One ``approve`` call waiting for its decision; the first answer wins."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._info: models.ApprovalInfo | None = None
        self._error: BaseException | None = None

    def resolve(self, info: models.ApprovalInfo) -> None:
        if not self._done.is_set() and info.decided:
            self._info = info
            self._done.set()

    def fail(self, error: BaseException) -> None:
        if not self._done.is_set():
            self._error = error
            self._done.set()

    @property
    def error(self) -> BaseException | None:
        return self._error

    def wait(self) -> models.ApprovalInfo:
        """Block until decided (or failed); interruptible by Ctrl-C."""
        self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._info is not None
        return self._info


class ApprovalWaits:
    """Waiters by approval key, plus the decisions already seen on the stream."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[str, ApprovalWaiter] = {}
        self._decided: dict[str, models.ApprovalInfo] = {}
        self._closed: Callable[[str], BaseException] | None = None

    def expect(self, key: str) -> ApprovalWaiter:
        """A waiter for ``key``, already resolved when its decision was seen before."""
        waiter = ApprovalWaiter()
        with self._lock:
            self._waiting[key] = waiter
            decided, closed = self._decided.get(key), self._closed
        if decided is not None:
            waiter.resolve(decided)
        elif closed is not None:
            waiter.fail(closed(key))
        return waiter

    def forget(self, key: str) -> None:
        with self._lock:
            self._waiting.pop(key, None)

    def offer(self, info: models.ApprovalInfo) -> None:
        """An approval's current state (from the stream or an RPC answer)."""
        if not info.decided:
            return
        with self._lock:
            self._decided[info.key] = info
            waiter = self._waiting.get(info.key)
        if waiter is not None:
            waiter.resolve(info)

    def close(self, make_error: Callable[[str], BaseException]) -> None:
        """Nothing will be decided any more: fail every waiter, now and later."""
        with self._lock:
            if self._closed is None:
                self._closed = make_error
            waiting = list(self._waiting.items())
        for key, waiter in waiting:
            waiter.fail(make_error(key))
