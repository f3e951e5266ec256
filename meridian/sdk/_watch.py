"""The flow runner's watcher: one ``WatchRun`` stream that resolves step futures and approvals.

It runs in a background thread while the flow body runs in the caller's thread. Updates
arrive in batches (``WatchRunRequest.batched``): the step outcomes of a batch resolve their
futures in one pass, each update with an ``approval`` the matching ``approve`` call (a cancel
fails the approvals still waiting); every update is passed to the ``on_update`` callback
(the whole batch at once to a callback with an ``updates`` method).
A broken stream is reopened from the last event id seen (with capped, jittered backoff), so
no update is lost or delivered twice; only when the control plane stays unreachable longer
than ``reconnect_timeout_s`` are the pending futures failed.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol, cast

from meridian import models
from meridian.core.errors import ConnectionFailed, MeridianError, StepCancelled
from meridian.sdk.context import FlowContext

log = logging.getLogger(__name__)

UpdateCallback = Callable[[models.RunUpdate], None]


class WatchClient(Protocol):
    def watch_run(
        self, flow_run_id: str, after_event_id: int = 0
    ) -> Iterator[models.RunUpdate]: ...


class RunWatcher:
    """Background reader of one run's updates; ``start()``, then ``stop()`` when done."""

    def __init__(
        self,
        client: WatchClient,
        context: FlowContext,
        on_update: UpdateCallback | None = None,
        *,
        after_event_id: int = 0,
        reconnect_timeout_s: float = 60.0,
        initial_backoff_s: float = 0.05,
        max_backoff_s: float = 2.0,
    ) -> None:
        self._client = client
        self._context = context
        self._on_update = on_update
        self._reconnect_timeout_s = reconnect_timeout_s
        self._initial_backoff_s = initial_backoff_s
        self._max_backoff_s = max_backoff_s
        self._stopping = threading.Event()
        self._stream: Iterator[list[models.RunUpdate]] | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"meridian-watch-{context.flow_run_id}", daemon=True
        )
        self.last_event_id = after_event_id
        self.run_state = ""
        self.reconnects = 0
        self._received_since_reconnect = False

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the stream to end (the run is terminal); True if it did."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop(self) -> None:
        """Close the stream now (idempotent)."""
        self._stopping.set()
        stream = self._stream
        cancel = getattr(stream, "cancel", None)
        if cancel is not None:
            cancel()
        if threading.current_thread() is not self._thread:
            self._thread.join(5.0)

    def abandon(self) -> None:
        """Close the stream without waiting for the thread (the process is about to exit)."""
        self._stopping.set()
        cancel = getattr(self._stream, "cancel", None)
        if cancel is not None:
            cancel()

    def _run(self) -> None:
        backoff = self._initial_backoff_s
        failing_since: float | None = None
        while not self._stopping.is_set():
            try:
                if self._follow_stream():
                    return
                problem: MeridianError = ConnectionFailed("the watch stream ended early")
            except MeridianError as exc:
                problem = exc
            if self._stopping.is_set():
                return
            now = time.monotonic()
            if self._received_since_reconnect:
                failing_since, backoff = None, self._initial_backoff_s
            failing_since = failing_since if failing_since is not None else now
            if now - failing_since > self._reconnect_timeout_s:
                self._give_up(problem)
                return
            log.warning(
                "watch stream of run %s broke (%s); reconnecting",
                self._context.flow_run_id,
                problem,
            )
            self.reconnects += 1
            # Full jitter: many runners reconnecting after a control-plane restart spread out.
            self._stopping.wait(random.uniform(0, backoff))
            backoff = min(backoff * 2, self._max_backoff_s)

    def _follow_stream(self) -> bool:
        """Read one stream to its end; True when the run reached a terminal state."""
        self._received_since_reconnect = False
        stream = self._open_stream()
        self._stream = stream
        if self._stopping.is_set():  # stop() ran before the stream existed to cancel
            getattr(stream, "cancel", lambda: None)()
            return True
        for batch in stream:
            self._received_since_reconnect = True
            # A reopened stream starts after last_event_id; the check guards servers that
            # replay the boundary event.
            fresh = [u for u in batch if not u.event_id or u.event_id > self.last_event_id]
            if not fresh:
                continue
            self.last_event_id = max(self.last_event_id, max(u.event_id for u in fresh))
            ended = self._handle(fresh)
            if ended:
                self._run_ended(ended)
                return True
        return self._stopping.is_set()

    def _open_stream(self) -> Iterator[list[models.RunUpdate]]:
        """The run's updates in batches; a client without batches (a test double, an older
        SDK's client) gives them one at a time."""
        batches = getattr(self._client, "watch_run_batches", None)
        if batches is not None:
            return cast(
                Iterator[list[models.RunUpdate]],
                batches(self._context.flow_run_id, self.last_event_id),
            )
        return _Singles(self._client.watch_run(self._context.flow_run_id, self.last_event_id))

    def _handle(self, batch: list[models.RunUpdate]) -> str:
        """Deliver a batch: every step outcome in one pass, then approvals in event order,
        then ``on_update``. Returns the run's final state when the batch ends the run."""
        end = next((i for i, u in enumerate(batch) if u.run_state), None)
        if end is not None:
            batch = batch[: end + 1]  # nothing of the run comes after its end
        outcomes = [u.step_outcome for u in batch if u.step_outcome is not None]
        if outcomes:
            self._context.resolve_many(outcomes)
        for update in batch:
            if update.approval is not None:
                self._context.approvals.offer(update.approval)
            if update.kind == "run.cancelling":
                # Nobody can decide for a cancelled run: an approve() that waits raises now.
                self._context.approvals.close(
                    lambda key: StepCancelled(
                        key, "cancelled", "", f"the flow run was cancelled while waiting for {key}"
                    )
                )
        self._notify(batch)
        return batch[-1].run_state

    def _notify(self, batch: list[models.RunUpdate]) -> None:
        """Hand the batch to ``on_update``: whole to a view that takes batches (``updates``,
        e.g. the CLI's progress views: one redraw per batch), else one update at a time."""
        if self._on_update is None:
            return
        whole: Callable[[list[models.RunUpdate]], None] | None = getattr(
            self._on_update, "updates", None
        )
        calls = (
            [functools.partial(whole, batch)]
            if whole is not None
            else [functools.partial(self._on_update, u) for u in batch]
        )
        for call in calls:
            try:
                call()
            except Exception:
                # A progress printer must never stop results from reaching the flow body.
                log.exception("on_update callback failed (events up to %s)", batch[-1].event_id)

    def _run_ended(self, state: str) -> None:
        self.run_state = state
        self._context.close(
            lambda f: StepCancelled(
                f.key, "cancelled", "", f"the flow run ended ({state}) before this step finished"
            )
        )
        self._context.approvals.close(
            lambda key: StepCancelled(
                key, "cancelled", "", f"the flow run ended ({state}) before {key} was decided"
            )
        )

    def _give_up(self, problem: MeridianError) -> None:
        message = (
            f"lost the watch stream of run {self._context.flow_run_id} for more than "
            f"{self._reconnect_timeout_s:.0f}s: {problem}"
        )
        log.error("%s", message)
        self._context.close(lambda f: ConnectionFailed(message))
        self._context.approvals.close(lambda key: ConnectionFailed(message))


class _Singles(Iterator[list[models.RunUpdate]]):
    """A one-update-at-a-time stream seen as batches of one (``cancel`` passes through)."""

    def __init__(self, stream: Iterable[models.RunUpdate]) -> None:
        self._stream = stream
        self._updates = iter(stream)

    def __next__(self) -> list[models.RunUpdate]:
        return [next(self._updates)]

    def cancel(self) -> None:
        getattr(self._stream, "cancel", lambda: None)()
