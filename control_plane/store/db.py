"""Engines, migrations and the executor that keeps blocking database work off the event loop.

SQLite runs in WAL mode with ``synchronous=FULL`` so a commit is on disk before we acknowledge
it; all writes go through one thread (SQLite has one writer anyway). PostgreSQL gets a small
pool of threads.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
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
from control_plane.store.tx import Tx, current_actor
from meridian.core.clock import Clock, utcnow

T = TypeVar("T")
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def _drop_effects(effects: Effects) -> None:
    """Until a dispatcher is attached there is nobody to send frames to or wake."""


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url, pool_size=8, max_overflow=4, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


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

    def __init__(self, url: str, *, clock: Clock = utcnow) -> None:
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
        loop = asyncio.get_running_loop()
        call = functools.partial(self._transact, usecase, *args, **kwargs)
        ctx = contextvars.copy_context()  # the caller's actor (tx.acting_as) comes along
        return await loop.run_in_executor(self._executor, ctx.run, call)

    def apply_effects(self, effects: Effects) -> None:
        self._apply_effects(effects)

    def _transact(self, usecase: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, Effects]:
        started = time.perf_counter()
        with self._sessions() as session, session.begin():
            tx = Tx(session, now=self.clock(), actor=current_actor())
            result = usecase(tx, *args, **kwargs)
        if self.commit_timer is not None:
            self.commit_timer(time.perf_counter() - started)
        return result, tx.effects

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
        self._executor.shutdown(wait=True)
        self.engine.dispose()
