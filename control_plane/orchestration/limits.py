"""Concurrency limits held by leases: who holds a slot, who gets one next, who waits and why.

A limit (``warehouse``: 4, or a deployment's run limit) has holders, each with a lease that
its agent or runner renews, and waiters in the order they asked. Pure: the use case loads the
rows, asks :func:`settle` with ``now``, and writes the answer back in one transaction; the
store holds at most one row per (limit, holder), which is what makes the count exact.

Rules:

* A holder whose lease has expired (``expires_at <= now``) has lapsed: its slot goes back to
  the pool. Its owner is presumed lost (a killed agent, a crashed runner), and a renewal
  arriving after expiry is refused (:func:`renew`), so a partitioned owner learns it lost the
  slot instead of holding it twice. Owners must stop using the slot when their lease expires
  unrenewed; that is what makes "never more than N" hold for the work itself, not just rows.
* Waiters get free slots strictly in order: a waiter never overtakes one ahead of it.
* Lowering a limit never evicts a holder; no one is granted until the count is below it.
* With the ``skip`` overflow policy (deployment run limits), a waiter that cannot be granted
  at once is refused instead of queued.
* Work that needs several limits takes them one at a time in :func:`acquisition_order`
  (sorted by name) and holds what it has while it waits for the next: with one global order
  no two waiters can each hold what the other waits for, so limits never deadlock.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import StrEnum

from meridian.core.errors import ValidationError

MAX_LIMIT = 10_000
MAX_LEASE = dt.timedelta(hours=1)
MIN_LEASE = dt.timedelta(seconds=1)
_NAME = re.compile(r"[a-z0-9][a-z0-9_.:-]{0,62}")
_MAX_ID = 200


class Overflow(StrEnum):
    """What happens to a waiter when the limit is full."""

    QUEUE = "queue"
    SKIP = "skip"


@dataclass(frozen=True)
class Holder:
    holder_id: str
    expires_at: dt.datetime


@dataclass(frozen=True)
class LimitState:
    """One limit as stored: its size, its holders and its waiters (oldest first).

    ``label`` is how people see it: ``concurrency limit 'warehouse'`` or
    ``run limit of deployment 'nightly-etl'``.
    """

    label: str
    limit: int
    holders: tuple[Holder, ...] = ()
    waiters: tuple[str, ...] = ()
    overflow: Overflow = Overflow.QUEUE


@dataclass(frozen=True)
class Settlement:
    """What one :func:`settle` decided; ``state`` is what to store."""

    state: LimitState
    granted: tuple[Holder, ...]
    lapsed: tuple[str, ...]
    refused: tuple[str, ...]


@dataclass(frozen=True)
class WaitPosition:
    """Where a waiter stands; ``message`` is what the step or run shows while it waits."""

    held: int
    limit: int
    position: int
    message: str


def validate_name(name: str) -> None:
    """A global limit's name: lower-case letters, digits, ``_ . : -``; at most 63."""
    if not _NAME.fullmatch(name):
        raise ValidationError(
            f"concurrency limit name {name[:80]!r} must be 1-63 lower-case letters, digits, "
            "'_', '.', ':' or '-', starting with a letter or digit"
        )


def validate_limit(limit: int) -> None:
    """0 (nothing runs: a pause) up to :data:`MAX_LIMIT`."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= MAX_LIMIT:
        raise ValidationError(f"a concurrency limit must be between 0 and {MAX_LIMIT}, got {limit}")


def validate_lease(lease: dt.timedelta) -> None:
    if not MIN_LEASE <= lease <= MAX_LEASE:
        raise ValidationError(f"a lease must last between {MIN_LEASE} and {MAX_LEASE}, got {lease}")


def request(state: LimitState, waiter_id: str) -> LimitState:
    """Join the queue (idempotent: a holder or an existing waiter keeps its place)."""
    _check_id(waiter_id)
    if waiter_id in state.waiters or any(h.holder_id == waiter_id for h in state.holders):
        return state
    return replace(state, waiters=(*state.waiters, waiter_id))


def release(state: LimitState, holder_id: str) -> LimitState:
    """Give a slot back, or leave the queue (idempotent)."""
    return replace(
        state,
        holders=tuple(h for h in state.holders if h.holder_id != holder_id),
        waiters=tuple(w for w in state.waiters if w != holder_id),
    )


def renew(
    state: LimitState, holder_id: str, now: dt.datetime, lease: dt.timedelta
) -> LimitState | None:
    """Extend a live lease to ``now + lease``; None when the holder no longer holds a slot.

    A lease that has already expired is not revived, even if no one has taken the slot yet:
    the owner must ask again (and queue behind anyone waiting).
    """
    validate_lease(lease)
    for index, holder in enumerate(state.holders):
        if holder.holder_id == holder_id:
            if holder.expires_at <= now:
                return None
            renewed = Holder(holder_id, max(holder.expires_at, now + lease))
            holders = (*state.holders[:index], renewed, *state.holders[index + 1 :])
            return replace(state, holders=holders)
    return None


def settle(state: LimitState, now: dt.datetime, lease: dt.timedelta) -> Settlement:
    """Drop lapsed leases, then grant free slots to waiters in order (or refuse them)."""
    validate_limit(state.limit)
    validate_lease(lease)
    live = tuple(h for h in _unique_holders(state.holders) if h.expires_at > now)
    lapsed = tuple(h.holder_id for h in state.holders if h not in live)
    free = max(0, state.limit - len(live))
    waiters = [w for w in _unique(state.waiters) if all(h.holder_id != w for h in live)]
    granted = tuple(Holder(w, now + lease) for w in waiters[:free])
    rest = tuple(waiters[free:])
    refused: tuple[str, ...] = ()
    if state.overflow is Overflow.SKIP:
        refused, rest = rest, ()
    settled = replace(state, holders=live + granted, waiters=rest)
    return Settlement(settled, granted, lapsed, refused)


def wait_position(state: LimitState, waiter_id: str) -> WaitPosition | None:
    """Where ``waiter_id`` stands in a settled state, or None if it is not waiting."""
    if waiter_id not in state.waiters:
        return None
    position = state.waiters.index(waiter_id) + 1
    held = len(state.holders)
    message = f"waiting for {state.label} ({held}/{state.limit} held; {ordinal(position)} in line)"
    return WaitPosition(held, state.limit, position, message)


def acquisition_order(names: Iterable[str]) -> tuple[str, ...]:
    """The order in which to take several limits: by name, each once."""
    unique = sorted(set(names))
    for name in unique:
        validate_name(name)
    return tuple(unique)


def blocking_limit(states: Iterable[LimitState], waiter_id: str) -> WaitPosition | None:
    """The first limit ``waiter_id`` is queued on among ``states``, with its place in line."""
    for state in states:
        position = wait_position(state, waiter_id)
        if position is not None:
            return position
    return None


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, ..., 11th, 12th, 13th, ..., 21st, 22nd."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _check_id(holder_id: str) -> None:
    if not holder_id or len(holder_id) > _MAX_ID:
        raise ValidationError(f"a limit holder id must be 1 to {_MAX_ID} characters")


def _unique(ids: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(ids))


def _unique_holders(holders: Iterable[Holder]) -> list[Holder]:
    # The store's unique key makes duplicates impossible; a value built by hand could still
    # have them, and counting one holder twice would under-fill the limit, not over-fill it.
    # Keep the first, so no holder is counted twice.
    seen: dict[str, Holder] = {}
    for holder in holders:
        seen.setdefault(holder.holder_id, holder)
    return list(seen.values())
