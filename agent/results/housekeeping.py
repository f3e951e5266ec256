"""The agent's side of result-store housekeeping: list the stores for the control plane's
garbage collection, and delete the objects it names (docs/results.md, "Clean-up").

* ``SweepResults``: every configured store is listed under ``runs/`` (objects older than the
  sweep's age only) and sent back in ``ResultListing`` pages of at most ``MAX_PAGE_OBJECTS``
  objects and ``page_bytes`` bytes; the last page says ``done`` and, one line per store, why
  a store could not be listed. One sweep runs at a time; a second one is refused at once.
* ``DeleteResults``: each object is deleted from its store. Idempotent: an object already
  gone counts as deleted. An object is deleted only if the store itself names one of its
  ``runs/`` keys with exactly that URI (``registry.locate``), so the control plane can never
  make an agent delete anything else. The answer (``ResultsDeleted``) has one error line per
  object that could not be deleted, ``"<uri>: <why>"``.

Store calls block, so they run in worker threads; answers go out on the agent's stream
through ``send`` and are not journaled: one lost with a broken stream is asked for again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from agent.actions import DeleteResultsAction, StoredObjectRef, SweepResultsAction
from agent.results._base import ObjectInfo, ResultStore
from agent.results.registry import locate
from meridian.core.errors import ValidationError
from meridian.core.resultref import ResultRef

log = logging.getLogger("meridian.agent.results.housekeeping")

RUNS_PREFIX = "runs/"
MAX_PAGE_OBJECTS = 1000
DEFAULT_PAGE_BYTES = 1024 * 1024
OBJECT_OVERHEAD_BYTES = 48
MAX_ERROR = 300
# Deletion requests worked on at once (the control plane sends one per purpose at a time).
MAX_DELETIONS_IN_FLIGHT = 2
_NO_DIGEST = "0" * 64


@dataclass(frozen=True)
class ListedObject:
    store: str
    uri: str
    size: int
    modified_ms: int


@dataclass(frozen=True)
class ResultListingOut:
    sweep_id: str
    objects: tuple[ListedObject, ...]
    done: bool
    error: str = ""


@dataclass(frozen=True)
class ResultsDeletedOut:
    request_id: str
    count: int
    bytes: int
    errors: tuple[str, ...] = ()


Answer = ResultListingOut | ResultsDeletedOut
Send = Callable[[Answer], Awaitable[None]]


class ResultHousekeeper:
    """Answers the control plane's SweepResults and DeleteResults for this site's stores."""

    def __init__(
        self,
        stores: Mapping[str, ResultStore],
        send: Send,
        *,
        page_bytes: int = DEFAULT_PAGE_BYTES,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._stores = stores
        self._send = send
        self._page_bytes = page_bytes
        self._clock = clock
        self._sweep: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._deleting = asyncio.Semaphore(MAX_DELETIONS_IN_FLIGHT)

    def handle(self, action: SweepResultsAction | DeleteResultsAction) -> None:
        """Start working on ``action`` (called from the frame handler: never blocks)."""
        if isinstance(action, SweepResultsAction):
            if self._sweep is not None and not self._sweep.done():
                refusal = ResultListingOut(
                    action.sweep_id, (), True, "a sweep already runs on this agent"
                )
                self._track(self._send(refusal))
                return
            self._sweep = self._track(self.sweep(action))
        else:
            self._track(self._delete_bounded(action))

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _track(self, work: Awaitable[None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.warning("result housekeeping could not answer: %s", t.exception())

        task.add_done_callback(done)
        return task

    # ---- sweeps -------------------------------------------------------------------------

    async def sweep(self, action: SweepResultsAction) -> None:
        """List every store and send the pages; the last one is ``done``."""
        older_than = self._clock() - timedelta(seconds=max(0.0, action.older_than_s))
        problems: list[str] = []
        sent = 0
        for name, store in sorted(self._stores.items()):
            listing = store_listing(store, older_than)
            while True:
                try:
                    page = await asyncio.to_thread(self._next_page, listing)
                except Exception as exc:
                    problems.append(f"{name}: {type(exc).__name__}: {exc}"[:MAX_ERROR])
                    log.warning("result store %r could not be listed: %s", name, exc)
                    break
                if not page:
                    break
                sent += len(page)
                await self._send(ResultListingOut(action.sweep_id, tuple(page), False))
        await self._send(ResultListingOut(action.sweep_id, (), True, "\n".join(problems)))
        log.info("listed %d stored objects for the control plane's garbage collection", sent)

    def _next_page(self, listing: Iterator[ListedObject]) -> list[ListedObject]:
        """(worker thread) The next page: at most MAX_PAGE_OBJECTS objects and page_bytes."""
        page: list[ListedObject] = []
        size = 0
        for obj in listing:
            page.append(obj)
            size += len(obj.uri) + len(obj.store) + OBJECT_OVERHEAD_BYTES
            if len(page) >= MAX_PAGE_OBJECTS or size >= self._page_bytes:
                break
        return page

    # ---- deletions ----------------------------------------------------------------------

    async def _delete_bounded(self, action: DeleteResultsAction) -> None:
        async with self._deleting:
            answer = await asyncio.to_thread(delete_objects, self._stores, action)
        if answer.errors:
            log.warning(
                "%d of %d stored objects could not be deleted; first: %s",
                len(answer.errors),
                len(action.objects),
                answer.errors[0],
            )
        await self._send(answer)


def store_listing(store: ResultStore, older_than: datetime) -> Iterator[ListedObject]:
    """(blocking, lazy) The store's run objects modified before ``older_than``."""
    for info in store.list(RUNS_PREFIX, older_than=older_than):
        yield listed(store, info)


def listed(store: ResultStore, info: ObjectInfo) -> ListedObject:
    uri = store.location(info.key, info.size, _NO_DIGEST).uri
    return ListedObject(store.name, uri, info.size, int(info.modified.timestamp() * 1000))


def delete_objects(
    stores: Mapping[str, ResultStore], action: DeleteResultsAction
) -> ResultsDeletedOut:
    """(blocking) Delete each object; one already gone counts as deleted."""
    count = size = 0
    errors: list[str] = []
    for obj in action.objects:
        try:
            store, key = _own_key(stores, obj)
            if store.delete(key):
                size += obj.size
        except Exception as exc:
            errors.append(f"{obj.uri}: {_why(exc)}")
            continue
        count += 1
    return ResultsDeletedOut(action.request_id, count, size, tuple(errors))


class NotOurs(ValidationError):
    """The control plane named an object this site does not have (or may not delete)."""


def _own_key(stores: Mapping[str, ResultStore], obj: StoredObjectRef) -> tuple[ResultStore, str]:
    store = stores.get(obj.store)
    if store is None:
        have = ", ".join(sorted(stores)) or "none"
        raise NotOurs(f"this agent has no result store {obj.store!r} (its stores: {have})")
    key = key_of(store, obj.uri)
    if key is None or not key.startswith(RUNS_PREFIX):
        raise NotOurs(f"not an object under {RUNS_PREFIX} of store {obj.store!r}")
    return store, key


def key_of(store: ResultStore, uri: str) -> str | None:
    """The key of ``store`` whose URI is exactly ``uri``, or None."""
    try:
        ref = ResultRef("site", store.name, uri, 0, _NO_DIGEST, "json")
    except ValidationError:
        return None
    location = locate(store, ref)
    return location.key if location is not None else None


def _why(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())[:MAX_ERROR]
