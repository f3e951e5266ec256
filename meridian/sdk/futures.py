"""``StepFuture``: the pending result of one submitted step call, and ``wait``.

A future is resolved exactly once, from the watcher thread of the flow runner (or at once
when a step runs in-process outside a flow); the flow body blocks on ``result()``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

_UNSET: Any = object()


class StepFuture:
    """The eventual result of a step run, identified by its deterministic key."""

    def __init__(self, key: str, step_name: str) -> None:
        self.key = key
        self.step_name = step_name
        self.step_run_id = ""
        self._done = threading.Event()
        self._result: Any = _UNSET
        self._exception: BaseException | None = None

    def __repr__(self) -> str:
        state = "done" if self.done() else "pending"
        return f"<StepFuture {self.key} {state}>"

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> Any:
        """Block until the step run ends; return its result or raise its error.

        Raises:
            StepFailed / StepCancelled: the step run did not complete.
            TimeoutError: ``timeout`` seconds passed first.
        """
        self._wait(timeout)
        if self._exception is not None:
            raise self._exception
        return self._result

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Block until the step run ends; return its error, or None if it completed."""
        self._wait(timeout)
        return self._exception

    def _wait(self, timeout: float | None) -> None:
        if not self._done.wait(timeout):
            raise TimeoutError(f"step {self.key} did not finish within {timeout}s")

    # Resolution is internal to the SDK; the first resolution wins so a late duplicate
    # outcome (e.g. replayed after a watch reconnect) cannot change a result already seen.
    def _set_result(self, value: Any) -> None:
        if not self._done.is_set():
            self._result = value
            self._done.set()

    def _set_exception(self, exc: BaseException) -> None:
        if not self._done.is_set():
            self._exception = exc
            self._done.set()


def wait(futures: Iterable[StepFuture], *, timeout: float | None = None) -> list[Any]:
    """Wait for every future and return their results in the order given.

    All futures are waited for before any failure is raised, so the error raised (the first
    failed future in the order given) does not depend on timing.

    Raises:
        StepFailed: a step run failed (the first one in the order given).
        TimeoutError: not all futures finished within ``timeout`` seconds in total.
    """
    items = list(futures)
    deadline = None if timeout is None else time.monotonic() + timeout
    for future in items:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        future.exception(remaining)
    return [future.result() for future in items]
