"""Group commit: use cases waiting for the store's thread share one transaction.

On SQLite every commit is an fsync and there is one writer, so a burst of report batches,
submissions and scheduler passes used to cost one fsync each, one after the other. Instead,
``Store.transact`` queues a ``Request``; the store's thread takes the requests waiting at that
moment (at most ``MAX_GROUP``, for at most ``MAX_GROUP_S`` of use-case time) and runs each in
its own savepoint of one transaction (``run_group``):

* a use case that raises rolls back its savepoint only, and its caller gets the exception;
* the group commits once; only then does each caller get its result and apply its effects,
  so nothing is acknowledged before it is durable;
* if the commit fails, every caller of the group gets that error (none was acknowledged).

Events and audit records queued in ``session.info`` by a use case whose savepoint rolled back
are dropped with it (``_pending_marks``), so they never reach the commit.
"""

from __future__ import annotations

import collections
import contextvars
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from control_plane.orchestration.values import Effects
from control_plane.store.tx import Tx, current_actor
from meridian.core.clock import Clock

# Bounds of one group: enough to share an fsync among a burst of agents' reports, small enough
# that the first caller of a group is not kept waiting long for the last one's work.
MAX_GROUP = 64
MAX_GROUP_S = 0.1


@dataclass
class Request:
    """One ``transact`` call waiting for the store's thread."""

    call: Callable[[Tx], Any]
    context: contextvars.Context
    name: str  # the use case's, for StoreStats
    future: Future[tuple[Any, Effects]] = field(default_factory=Future)


class GroupQueue:
    """Requests waiting for the store's thread, and whether a drain is already scheduled."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: collections.deque[Request] = collections.deque()
        self._scheduled = False

    def put(self, request: Request) -> bool:
        """Queue ``request``; True when the caller must schedule a drain (none is pending)."""
        with self._lock:
            self._waiting.append(request)
            if self._scheduled:
                return False
            self._scheduled = True
            return True

    def take(self, limit: int) -> list[Request]:
        with self._lock:
            return [self._waiting.popleft() for _ in range(min(limit, len(self._waiting)))]

    def give_back(self, requests: list[Request]) -> None:
        """Put requests a group had no time for back at the head, in their order."""
        with self._lock:
            self._waiting.extendleft(reversed(requests))

    def fail_all(self, exc: BaseException) -> None:
        """Fail every waiting request (nobody will run them: the store is closed)."""
        with self._lock:
            waiting, self._waiting = list(self._waiting), collections.deque()
            self._scheduled = False
        for request in waiting:
            _set_exception(request, exc)

    def done(self) -> bool:
        """After a group: True when more requests wait (the drain stays scheduled)."""
        with self._lock:
            if self._waiting:
                return True
            self._scheduled = False
            return False


@dataclass
class Group:
    """The outcome of one group, delivered to its callers only after the commit."""

    requests: list[Request]
    succeeded: list[tuple[Request, Any, Effects]] = field(default_factory=list)
    failed: list[tuple[Request, BaseException]] = field(default_factory=list)

    def settle(self, commit_error: BaseException | None) -> None:
        """Tell every caller of the group its outcome; with ``commit_error`` nothing of the
        group committed, so every caller not already failed gets that error."""
        for request, exc in self.failed:
            _set_exception(request, exc)
        for request, result, effects in self.succeeded:
            if commit_error is None and not request.future.done():
                request.future.set_result((result, effects))
        if commit_error is not None:
            for request in self.requests:
                _set_exception(request, commit_error)


def _set_exception(request: Request, exc: BaseException) -> None:
    if request.future.done():
        return
    # A request the group never started is still cancellable: start it to fail it.
    if request.future.running() or request.future.set_running_or_notify_cancel():
        request.future.set_exception(exc)


def run_group(session: Session, clock: Clock, queue: GroupQueue, group: Group) -> None:
    """Run ``requests`` in savepoints of ``session``'s open transaction (the caller commits),
    recording each outcome in ``group``.

    Requests left when ``MAX_GROUP_S`` has passed go back to ``queue`` for the next group.
    """
    started = time.perf_counter()
    for i, request in enumerate(group.requests):
        if i and time.perf_counter() - started > MAX_GROUP_S:
            queue.give_back(group.requests[i:])
            del group.requests[i:]  # the next group's now
            break
        if not request.future.set_running_or_notify_cancel():
            continue  # its caller went away before it started
        tx = Tx(session, now=clock(), actor=request.context.run(current_actor))
        marks = _pending_marks(session)
        try:
            with session.begin_nested():
                result = request.context.run(request.call, tx)
        except Exception as exc:  # this use case only: its savepoint is rolled back
            _drop_pending_since(session, marks)
            group.failed.append((request, exc))
            continue
        except BaseException as exc:  # the whole group ends: its caller still hears why
            group.failed.append((request, exc))
            raise
        group.succeeded.append((request, result, tx.effects))


def _pending_marks(session: Session) -> dict[Any, int]:
    """How long each list queued for the commit (events, audit records) is now."""
    return {key: len(value) for key, value in session.info.items() if isinstance(value, list)}


def _drop_pending_since(session: Session, marks: dict[Any, int]) -> None:
    for key, value in list(session.info.items()):
        if isinstance(value, list):
            del value[marks.get(key, 0) :]
