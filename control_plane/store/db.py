"""Engines, migrations and the executor that keeps blocking database work off the event loop.

SQLite runs in WAL mode with ``synchronous=FULL`` so a commit is on disk before we acknowledge
it; all writes go through one thread (SQLite has one writer anyway). PostgreSQL gets a small
pool of threads.

On SQLite the use cases waiting for that thread are committed together (group commit,
``store/group.py``): one transaction, one fsync, each use case in its own savepoint.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from control_plane.orchestration.values import Effects
from control_plane.store.group import MAX_GROUP, Group, GroupQueue, Request, run_group
from control_plane.store.tx import Tx, current_actor
from meridian.core.clock import Clock, utcnow

T = TypeVar("T")
log = logging.getLogger(__name__)
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def _drop_effects(effects: Effects) -> None:
    """Until a dispatcher is attached there is nobody to send frames to or wake."""


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url, pool_size=8, max_overflow=4, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Transactions are begun explicitly (``_sqlite_begin``), not by the driver before the
    # first write: savepoints (group commit) need the transaction open before them.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_begin(connection: Any) -> None:
    # IMMEDIATE takes the write lock at BEGIN (waiting up to busy_timeout). A deferred BEGIN
    # would read first and upgrade at the first write, which SQLite refuses at once ("database
    # is locked", no waiting) when another process (an offline admin command, a second store)
    # committed in between. WAL readers are never blocked by it.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


class Store:
    """Runs use cases and queries in a transaction on a worker thread.

    ``await store.transact(usecase, *args)`` calls ``usecase(tx, *args)`` with a fresh ``Tx``
    inside ``session.begin()``; once the transaction has committed it hands ``tx.effects`` to
    the function given to :meth:`after_commit` (the dispatcher: send frames, wake watchers),
    on the caller's event loop. Nothing is sent for a change that might still roll back, and
    anything acknowledged after the await is durable.

    ``await store.run(fn, *args)`` calls ``fn(session, *args)`` the same way, for reads and for
    changes outside the run/step/attempt state machines (tokens, enrollment).
    """

    def __init__(
        self, url: str, *, clock: Clock = utcnow, group_commit: bool | None = None
    ) -> None:
        self.url = url
        self.clock = clock
        self._apply_effects: Callable[[Effects], None] = _drop_effects
        # Told how long each transaction took (use case and commit), on the store's thread.
        self.commit_timer: Callable[[float], None] | None = None
        self.engine = make_engine(url)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        workers = 1 if self.is_sqlite else 8
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="store")
        # Group commit pays off where commits are serial and each is an fsync (SQLite); on
        # PostgreSQL eight connections commit side by side and a group would only hold row
        # locks longer (decision 0017).
        self.group_commit = self.is_sqlite if group_commit is None else group_commit
        self._queue = GroupQueue()
        self.stats = StoreStats()

    def migrate(self) -> None:
        migrate(self.engine)

    def after_commit(self, apply: Callable[[Effects], None]) -> None:
        """Set who carries out committed effects (called on the event loop thread)."""
        self._apply_effects = apply

    def transact_sync(self, usecase: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``usecase(tx, ...)`` and commit; the effects are applied only by :meth:`transact`
        (a synchronous caller, such as an offline admin command, has nobody to send them to)."""
        return self._transact(usecase, *args, **kwargs)[0]

    async def transact(self, usecase: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        result, effects = await self.transact_collect(usecase, *args, **kwargs)
        self._apply_effects(effects)
        return result

    async def transact_collect(
        self, usecase: Callable[..., T], *args: Any, **kwargs: Any
    ) -> tuple[T, Effects]:
        """Like :meth:`transact`, but hand the effects back for the caller to apply with
        :meth:`apply_effects` once it is ready for them (a connecting agent's stream must
        be registered and welcomed before re-sent assignments reach it)."""
        ctx = contextvars.copy_context()  # the caller's actor (tx.acting_as) comes along
        if self.group_commit:
            request = Request(functools.partial(_call, usecase, args, kwargs), ctx, _name(usecase))
            if self._queue.put(request):
                try:
                    self._executor.submit(self._drain)
                except RuntimeError as exc:  # closed: fail what waits instead of hanging
                    self._queue.fail_all(exc)
            result, effects = await asyncio.wrap_future(request.future)
            return result, effects
        loop = asyncio.get_running_loop()
        call = functools.partial(self._transact, usecase, *args, **kwargs)
        return await loop.run_in_executor(self._executor, ctx.run, call)

    def apply_effects(self, effects: Effects) -> None:
        self._apply_effects(effects)

    def _transact(self, usecase: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, Effects]:
        started = time.perf_counter()
        with self._sessions() as session, session.begin():
            tx = Tx(session, now=self.clock(), actor=current_actor())
            result = usecase(tx, *args, **kwargs)
        self.stats.counted([_name(usecase)])
        if self.commit_timer is not None:
            self.commit_timer(time.perf_counter() - started)
        return result, tx.effects

    def _drain(self) -> None:
        """On the store's thread: run the waiting requests as one group, then reschedule if
        more arrived (as a new job, so queued reads are not starved by a stream of writes)."""
        while True:
            requests = self._queue.take(MAX_GROUP)
            if requests:
                self._commit_group(requests)
            if not self._queue.done():
                return
            try:
                self._executor.submit(self._drain)
                return
            except RuntimeError:  # the store is closing: finish the queue in this job
                continue

    def _commit_group(self, requests: list[Request]) -> None:
        started = time.perf_counter()
        group = Group(requests)
        try:
            with self._sessions() as session, session.begin():
                run_group(session, self.clock, self._queue, group)
        except BaseException as exc:  # the commit (or the group's session) failed: no one
            group.settle(exc)  # of the group was acknowledged, each caller gets the error
            if not isinstance(exc, Exception):
                raise
            return
        self.stats.counted([request.name for request, _, _ in group.succeeded])
        if self.commit_timer is not None:
            self.commit_timer(time.perf_counter() - started)
        group.settle(None)

    def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        with self._sessions() as session, session.begin():
            return fn(session, *args)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        call = functools.partial(self.run_sync, fn, *args)
        ctx = contextvars.copy_context()
        return await loop.run_in_executor(self._executor, ctx.run, call)

    def session(self) -> Session:
        return self._sessions()

    def close(self) -> None:
        """Finish the queued work (groups already scheduled run to their commit), then close."""
        self._executor.shutdown(wait=True)
        self.engine.dispose()
        log.info("store: %d commits carried %d use cases", self.stats.commits, self.stats.use_cases)


def _call(usecase: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any], tx: Tx) -> T:
    return usecase(tx, *args, **kwargs)


def _name(usecase: Callable[..., Any]) -> str:
    return getattr(usecase, "__name__", type(usecase).__name__)


class StoreStats:
    """Counters of committed use-case transactions, for tests and benchmarks: ``commits`` is
    what costs an fsync on SQLite, ``use_cases`` how many use cases they carried, and
    ``by_use_case`` how many of each (by function name) committed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.commits = 0
        self.use_cases = 0
        self.by_use_case: collections.Counter[str] = collections.Counter()

    def counted(self, names: list[str]) -> None:
        with self._lock:
            self.commits += 1
            self.use_cases += len(names)
            self.by_use_case.update(names)
