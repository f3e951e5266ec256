"""Named global concurrency limits (``meridian limits set warehouse 4``) and their slots.

A limit is a ``ConcurrencyLimitRow``; who holds or waits for one of its slots is a
``LimitSlotRow`` per (limit, holder). The rules (who is granted, who lapsed, who waits where)
are the pure ``orchestration.limits``: each change loads one limit's rows, asks it, and writes
the answer back in the same transaction (the limit's row is locked first, so two replicas
settle one limit one after the other).

Holders are attempts (``attempt:<id>``: a step that names limits in ``@step(concurrency=...)``)
or runs (``run:<id>``). An attempt takes a slot of each of its limits, in acquisition order,
before the scheduler assigns it (``acquire``), holds them while ASSIGNED/RUNNING, and gives
them back in the transaction that ends it (``store.tx.move_attempt`` deletes its rows), so a
retry queues again like any newcomer.

Leases: every lease sweep renews the slots of holders still alive — an attempt QUEUED (the
control plane itself waits for it), or ASSIGNED/RUNNING on an agent heard from within the
step's ``lost_after`` (``renew_leases``) — and lets the others lapse (``lapse_expired``). An
attempt whose agent is lost is ended LOST by the same sweep (its slot goes back then); a lease
lapses on its own only when nothing ends its holder (``on_agent_lost="wait"``, a holder left
behind): never before the control plane has given up on the work.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import delete, func, select, update

from control_plane import audit
from control_plane.orchestration import limits as rules
from control_plane.orchestration.limits import Holder, LimitState, WaitPosition
from control_plane.store.models import (
    AgentRow,
    AttemptRow,
    ConcurrencyLimitRow,
    FlowRunRow,
    LimitSlotRow,
    StepRunRow,
)
from control_plane.store.tx import ATTEMPT_HOLDER, Tx
from meridian.core.errors import ConflictError, NotFound
from meridian.core.states import AttemptState, RunState

# How long a granted slot stays held without renewal; the lease sweep renews live holders
# far more often than this.
LEASE = dt.timedelta(seconds=30)
ATTEMPT = ATTEMPT_HOLDER
RUN = "run:"
MAX_LISTED_HOLDERS = 1000
_LIVE_ATTEMPT = (AttemptState.QUEUED, AttemptState.ASSIGNED, AttemptState.RUNNING)
_LIVE_RUN = (RunState.RUNNING, RunState.PAUSED, RunState.CANCELLING)


@dataclass(frozen=True)
class LimitView:
    """A limit as people see it: its size, what holds its slots, how many wait."""

    name: str
    limit: int
    holders: tuple[str, ...]
    waiting: int


@dataclass(frozen=True)
class Blocked:
    """Why ``acquire`` could not take every slot: the limit it waits on, who holds that
    limit's slots now, and where the holder stands in its line."""

    name: str
    holders: frozenset[str]
    position: WaitPosition


@dataclass(frozen=True)
class HolderLiveness:
    """Facts the lease sweep judges an attempt holder's agent by (from ``expire_agent_leases``'
    own inputs): when the control plane started, and the agents heard from here."""

    started_at: dt.datetime
    last_seen: Mapping[str, dt.datetime]
    default_lost_after_s: float


def attempt_holder(attempt_id: str) -> str:
    return f"{ATTEMPT}{attempt_id}"


def run_holder(run_id: str) -> str:
    return f"{RUN}{run_id}"


def label(name: str) -> str:
    return f"concurrency limit {name!r}"


# ---- administration -----------------------------------------------------------------------


def set_limit(tx: Tx, name: str, limit: int) -> LimitView:
    """Create a limit or change its size (audited). Lowering it evicts no holder: no one is
    granted until fewer than ``limit`` hold a slot."""
    rules.validate_name(name)
    rules.validate_limit(limit)
    row = tx.session.get(ConcurrencyLimitRow, name, with_for_update=True)
    before = None if row is None else row.limit
    if row is None:
        row = ConcurrencyLimitRow(name=name, limit=limit, updated_at=tx.now)
        tx.session.add(row)
    else:
        row.limit, row.updated_at = limit, tx.now
    tx.session.flush()
    audit.append(
        tx.session,
        actor=audit.CLI,
        action="limit.set",
        subject=name,
        details={"limit": limit, "before": before},
        now=tx.now,
    )
    if before is None or limit > before:
        tx.effects.wake_scheduler = True  # room for waiters
    return _view(tx, row)


def delete_limit(tx: Tx, name: str) -> LimitView:
    """Delete a limit no one holds or waits for (audited); a limit in use is refused, so a
    step already queued on it never loses what it waits for."""
    row = tx.session.get(ConcurrencyLimitRow, name, with_for_update=True)
    if row is None:
        raise NotFound(f"{label(name)} does not exist")
    view = _view(tx, row)
    if view.holders or view.waiting:
        raise ConflictError(
            f"{label(name)} is in use ({len(view.holders)} holding, {view.waiting} waiting); "
            f"set it to 0 to stop new work taking it, and delete it once it is free"
        )
    tx.session.delete(row)
    audit.append(
        tx.session,
        actor=audit.CLI,
        action="limit.deleted",
        subject=name,
        details={"limit": row.limit},
        now=tx.now,
    )
    return view


def list_limits(tx: Tx) -> list[LimitView]:
    rows = tx.session.scalars(select(ConcurrencyLimitRow).order_by(ConcurrencyLimitRow.name))
    return [_view(tx, row) for row in rows]


def check_limits_exist(tx: Tx, names: Iterable[str], where: str = "a step") -> None:
    """Refuse work naming a limit that does not exist (a typo would otherwise wait forever)."""
    wanted = set(names)
    if not wanted:
        return
    found = set(
        tx.session.scalars(
            select(ConcurrencyLimitRow.name).where(ConcurrencyLimitRow.name.in_(sorted(wanted)))
        )
    )
    missing = sorted(wanted - found)
    if missing:
        raise NotFound(
            f"{where} takes {label(missing[0])}, which does not exist "
            f"(create it with: meridian limits set {missing[0]} N)"
        )


# ---- slots --------------------------------------------------------------------------------


def acquire(
    tx: Tx, holder_id: str, names: Sequence[str], lease: dt.timedelta = LEASE
) -> Blocked | None:
    """Take a slot of each limit in ``names`` (in acquisition order, keeping those already
    held while waiting for the next); None when all are held, else where the holder waits."""
    for name in rules.acquisition_order(names):
        row = tx.session.get(ConcurrencyLimitRow, name, with_for_update=True)
        if row is None:
            message = f"waiting for {label(name)}, which does not exist (meridian limits set)"
            return Blocked(name, frozenset(), WaitPosition(0, 0, 0, message))
        state = _settle_and_store(tx, row, lease, joining=holder_id)
        holders = frozenset(h.holder_id for h in state.holders)
        if holder_id not in holders:
            position = rules.wait_position(state, holder_id)
            assert position is not None  # request() queued it and it was not granted
            return Blocked(name, holders, position)
    return None


def release(tx: Tx, holder_id: str) -> bool:
    """Give back every slot ``holder_id`` holds and leave every queue; True if it held one
    (the scheduler is woken: a waiter may now be granted)."""
    held = tx.session.scalars(
        select(LimitSlotRow.expires_at).where(LimitSlotRow.holder_id == holder_id)
    ).all()
    if not held:
        return False
    tx.session.execute(delete(LimitSlotRow).where(LimitSlotRow.holder_id == holder_id))
    freed = any(expires_at is not None for expires_at in held)
    if freed:
        tx.effects.wake_scheduler = True
    return freed


def waiting_position(tx: Tx, holder_id: str, names: Sequence[str]) -> WaitPosition | None:
    """Where ``holder_id`` waits (the first of its limits it does not hold), without changing
    anything; None if it holds them all or is not queued on any."""
    states = []
    for name in rules.acquisition_order(names):
        row = tx.session.get(ConcurrencyLimitRow, name)
        if row is None:
            continue
        states.append(_load(tx, row))
    return rules.blocking_limit(states, holder_id)


def renew_leases(tx: Tx, liveness: HolderLiveness, lease: dt.timedelta = LEASE) -> int:
    """Renew the slots of live attempt and run holders (see the module docstring); returns
    how many."""
    # Expired leases not yet lapsed are judged like the others: the control plane judges its
    # holders' liveness itself (no owner renews its own lease here), and a lease that ran out
    # while the control plane was down could not have been renewed.
    held = tx.session.scalars(
        select(LimitSlotRow.holder_id).where(LimitSlotRow.expires_at.is_not(None)).distinct()
    ).all()
    attempt_ids = sorted({h.removeprefix(ATTEMPT) for h in held if h.startswith(ATTEMPT)})
    rows = [
        (attempt_holder(attempt_id), state, agent_id, step)
        for start in range(0, len(attempt_ids), 500)
        for attempt_id, state, agent_id, step in tx.session.execute(
            select(AttemptRow.id, AttemptRow.state, AttemptRow.agent_id, StepRunRow)
            .join(StepRunRow, StepRunRow.id == AttemptRow.step_run_id)
            .where(AttemptRow.id.in_(attempt_ids[start : start + 500]))
        )
    ]
    agents = _last_heard(tx, {agent for _, _, agent, _ in rows if agent}, liveness)
    alive = sorted(
        {
            holder
            for holder, state, agent_id, step in rows
            if _alive(state, agent_id, step, agents, liveness, tx.now)
        }
        | _live_runs(tx, [h.removeprefix(RUN) for h in held if h.startswith(RUN)])
    )
    for start in range(0, len(alive), 500):
        tx.session.execute(
            update(LimitSlotRow)
            .where(
                LimitSlotRow.holder_id.in_(alive[start : start + 500]),
                LimitSlotRow.expires_at.is_not(None),
            )
            .values(expires_at=tx.now + lease)
        )
    return len(alive)


def sweep_limit_leases(tx: Tx, liveness: HolderLiveness, lease: dt.timedelta = LEASE) -> None:
    """The lease sweep's part: renew live holders, then let the others' slots go."""
    renew_leases(tx, liveness, lease)
    lapse_expired(tx, lease)


def lapse_expired(tx: Tx, lease: dt.timedelta = LEASE) -> list[str]:
    """Settle every limit some of whose holders' leases expired: their slots go back and the
    next waiters are granted. Returns the lapsed holders."""
    names = tx.session.scalars(
        select(LimitSlotRow.limit_name)
        .where(LimitSlotRow.expires_at.is_not(None), LimitSlotRow.expires_at <= tx.now)
        .distinct()
    ).all()
    lapsed: list[str] = []
    for name in sorted(names):
        row = tx.session.get(ConcurrencyLimitRow, name, with_for_update=True)
        if row is None:
            continue
        before = {h.holder_id for h in _load(tx, row).holders}
        after = {h.holder_id for h in _settle_and_store(tx, row, lease).holders}
        lapsed.extend(sorted(before - after))
    if lapsed:
        tx.effects.wake_scheduler = True
    return lapsed


# ---- internals ----------------------------------------------------------------------------


def _load(tx: Tx, row: ConcurrencyLimitRow) -> LimitState:
    slots = tx.session.scalars(
        select(LimitSlotRow)
        .where(LimitSlotRow.limit_name == row.name)
        .order_by(LimitSlotRow.requested_at, LimitSlotRow.seq)
    ).all()
    holders = tuple(Holder(s.holder_id, s.expires_at) for s in slots if s.expires_at is not None)
    waiters = tuple(s.holder_id for s in slots if s.expires_at is None)
    return LimitState(label(row.name), row.limit, holders, waiters)


def _settle_and_store(
    tx: Tx, row: ConcurrencyLimitRow, lease: dt.timedelta, joining: str | None = None
) -> LimitState:
    state = _load(tx, row)
    known = {h.holder_id for h in state.holders} | set(state.waiters)
    if joining is not None:
        state = rules.request(state, joining)
    settled = rules.settle(state, tx.now, lease)
    if settled.lapsed:
        tx.session.execute(
            delete(LimitSlotRow).where(
                LimitSlotRow.limit_name == row.name, LimitSlotRow.holder_id.in_(settled.lapsed)
            )
        )
    for holder in settled.granted:
        if holder.holder_id in known:
            tx.session.execute(
                update(LimitSlotRow)
                .where(
                    LimitSlotRow.limit_name == row.name,
                    LimitSlotRow.holder_id == holder.holder_id,
                )
                .values(acquired_at=tx.now, expires_at=holder.expires_at)
            )
        else:
            _insert(tx, row.name, holder.holder_id, holder.expires_at)
    if joining is not None and joining not in known and joining in settled.state.waiters:
        _insert(tx, row.name, joining, None)
    return settled.state


def _insert(tx: Tx, name: str, holder_id: str, expires_at: dt.datetime | None) -> None:
    seq = tx.session.scalar(
        select(func.coalesce(func.max(LimitSlotRow.seq), 0)).where(LimitSlotRow.limit_name == name)
    )
    tx.session.add(
        LimitSlotRow(
            limit_name=name,
            holder_id=holder_id,
            requested_at=tx.now,
            seq=int(seq or 0) + 1,
            acquired_at=tx.now if expires_at is not None else None,
            expires_at=expires_at,
        )
    )
    tx.session.flush()


def _view(tx: Tx, row: ConcurrencyLimitRow) -> LimitView:
    state = _load(tx, row)
    ids = [h.holder_id for h in state.holders][:MAX_LISTED_HOLDERS]
    return LimitView(row.name, row.limit, _describe(tx, ids), len(state.waiters))


def _describe(tx: Tx, holder_ids: Sequence[str]) -> tuple[str, ...]:
    """``step <run>/<key>`` for attempts, ``run <id>`` for runs."""
    attempts = [h.removeprefix(ATTEMPT) for h in holder_ids if h.startswith(ATTEMPT)]
    steps = {
        attempt_id: (run_id, key)
        for attempt_id, run_id, key in tx.session.execute(
            select(AttemptRow.id, AttemptRow.flow_run_id, StepRunRow.key)
            .join(StepRunRow, StepRunRow.id == AttemptRow.step_run_id)
            .where(AttemptRow.id.in_(attempts))
        )
    }
    described = []
    for holder in holder_ids:
        found = steps.get(holder.removeprefix(ATTEMPT))
        if holder.startswith(ATTEMPT) and found is not None:
            described.append(f"step {found[0]}/{found[1]}")
        elif holder.startswith(RUN):
            described.append(f"run {holder.removeprefix(RUN)}")
        else:
            described.append(holder)
    return tuple(described)


def _live_runs(tx: Tx, run_ids: Sequence[str]) -> set[str]:
    """Run holders (``@flow(concurrency=...)``) still alive: PENDING (held back by the control
    plane itself) or live (RUNNING, PAUSED, CANCELLING). A run whose runner lease lapsed stays
    alive until the lease sweep crashes it (after the restart grace: a control plane that was
    down must not hand a slot on while the old runner reconnects) or resumes it elsewhere; a
    CRASHED run's slots lapse here, and a run that ends releases them in ``move_run``."""
    alive: set[str] = set()
    for start in range(0, len(run_ids), 500):
        for run_id, state in tx.session.execute(
            select(FlowRunRow.id, FlowRunRow.state).where(
                FlowRunRow.id.in_(run_ids[start : start + 500])
            )
        ):
            if state == RunState.PENDING or state in _LIVE_RUN:
                alive.add(run_holder(run_id))
    return alive


def _last_heard(tx: Tx, agent_ids: set[str], liveness: HolderLiveness) -> dict[str, dt.datetime]:
    heard: dict[str, dt.datetime] = {}
    if not agent_ids:
        return heard
    for agent_id, stored, enrolled in tx.session.execute(
        select(AgentRow.id, AgentRow.last_heartbeat_at, AgentRow.enrolled_at).where(
            AgentRow.id.in_(sorted(agent_ids))
        )
    ):
        seen = stored or enrolled
        here = liveness.last_seen.get(agent_id)
        if here is not None and here > seen:
            seen = here
        heard[agent_id] = max(seen, liveness.started_at)
    return heard


def _alive(
    state: str,
    agent_id: str | None,
    step: StepRunRow,
    heard: Mapping[str, dt.datetime],
    liveness: HolderLiveness,
    now: dt.datetime,
) -> bool:
    if state == AttemptState.QUEUED:
        return True
    if state not in _LIVE_ATTEMPT or agent_id is None or agent_id not in heard:
        return False
    lost_after = step.spec.lost_after_s or liveness.default_lost_after_s
    return (now - heard[agent_id]).total_seconds() < lost_after
