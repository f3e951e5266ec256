"""Retention at the site: each store's ``retention_days``, enforced by the agent itself.

For every configured store the agent runs one background task. Every ``SWEEP_INTERVAL_S`` it
deletes the objects under ``runs/`` older than the store's ``retention_days`` (stores without
it keep their objects until a run is deleted or ``meridian results gc`` removes them), and
discards uploads that crashed writers left unfinished for more than ``STALE_UPLOAD_AGE``
(``abort_incomplete``; never an upload in flight). All store calls run off the event loop;
each sweep logs what it removed, and a failing sweep is logged and tried again next time: it
never stops the agent.

Several agents of one environment may share a store and sweep it: deletes of the same object
are harmless (``delete`` returns False for what another agent removed first).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from agent.results._base import ResultStore
from agent.results.config import StoreConfig

log = logging.getLogger("meridian.agent.results.retention")

RUNS_PREFIX = "runs/"
SWEEP_INTERVAL_S = 3600.0
STALE_UPLOAD_AGE = timedelta(days=1)
# A sweep stops after this many deletes and the next one goes on: each stays short, so an
# agent that stops never waits long for a sweep running in its thread.
MAX_DELETES_PER_SWEEP = 10_000


@dataclass(frozen=True)
class SweepResult:
    deleted: int
    deleted_bytes: int
    aborted: int
    errors: int


def sweep_store(
    store: ResultStore,
    retention_days: int | None,
    now: datetime | None = None,
    max_deletes: int = MAX_DELETES_PER_SWEEP,
) -> SweepResult:
    """One sweep of ``store`` (blocking): expired objects (at most ``max_deletes`` attempts)
    and stale incomplete uploads."""
    now = now or datetime.now(UTC)
    deleted = deleted_bytes = errors = 0
    if retention_days is not None:
        cutoff = now - timedelta(days=retention_days)
        for info in store.list(RUNS_PREFIX, older_than=cutoff):
            if deleted + errors >= max_deletes:
                break
            try:
                if store.delete(info.key):
                    deleted += 1
                    deleted_bytes += info.size
            except Exception as exc:
                errors += 1
                log.warning("result store %r: cannot delete %s: %s", store.name, info.key, exc)
    aborted = store.abort_incomplete(now - STALE_UPLOAD_AGE)
    return SweepResult(deleted, deleted_bytes, aborted, errors)


async def keep_retention(
    store: ResultStore, retention_days: int | None, interval_s: float = SWEEP_INTERVAL_S
) -> None:
    """Sweep ``store`` now and then every ``interval_s`` until cancelled."""
    while True:
        try:
            result = await asyncio.to_thread(sweep_store, store, retention_days)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("result store %r: retention sweep failed", store.name)
        else:
            if result.deleted or result.aborted or result.errors:
                log.info(
                    "result store %r: retention removed %d objects (%d bytes) older than %s "
                    "days, %d unfinished uploads; %d deletes failed",
                    store.name,
                    result.deleted,
                    result.deleted_bytes,
                    retention_days,
                    result.aborted,
                    result.errors,
                )
        await asyncio.sleep(interval_s)


def retention_tasks(
    stores: Mapping[str, ResultStore],
    configs: Mapping[str, StoreConfig],
    interval_s: float = SWEEP_INTERVAL_S,
) -> list[asyncio.Task[None]]:
    """One sweeping task per store (started on the running loop)."""
    return [
        asyncio.ensure_future(keep_retention(store, configs[name].retention_days, interval_s))
        for name, store in stores.items()
    ]
