"""One scheduling pass inside one transaction: assign due attempts (as ``orchestration.planning``
plans), say why the others wait (``orchestration.waiting``, an ``attempt.waiting`` event once
per run, target, provider, residency, result store and reason), expire unschedulable ones, and
say when the next stored timer (retry delay, schedule deadline) falls due.

The queued attempts come from the dispatcher's in-memory ``ReadyQueue`` (``load_ready`` rebuilds
it from the store): a pass loads only the attempts it assigns (at most the free slots), the
oldest attempt of each group it explains, and the attempts whose deadline passed — however
many are queued. Each loaded attempt is re-checked (``QUEUED``, and on PostgreSQL ``FOR UPDATE
SKIP LOCKED``: another replica may hold it); entries that are no longer queued are dropped.

``queue_and_assign`` runs a use case that queues attempts (a submission) and assigns them in
the same transaction to slots the dispatcher reserved for it (one commit instead of two on
the path to a step's start); what it does not assign stays queued for the next pass.

Data residency: an attempt whose inputs name stored results carries the residency rules of
their environments (``ReadyEntry.residency``, set when it was queued, or here when the queue is
rebuilt); planning never gives it to an agent that may not read them, and its waiting reason
names the rule when that is what it waits for.

Result stores: an attempt whose step names a result store (``ReadyEntry.result_store``) is
assigned only to an agent that advertised that store, and waits (reason ``result_store``)
while the connected agents matching its target lack it.

Concurrency limits: an attempt whose step names limits (``ReadyEntry.limits``) is assigned
only once it holds a slot of each (``usecases.limits.acquire``, asked by the plan when an
agent could take it); within a pass a limit found full turns away later attempts that do not
hold it without asking the store again. Its waiting reason names the limit and its place in
line. Attempts without limits never touch any of it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy import select

from control_plane.orchestration.matching import AgentSlot
from control_plane.orchestration.planning import Assignment, ReadyAttempt, has_free_slot, plan
from control_plane.orchestration.ready import ExplainedKey, ReadyEntry, ReadyQueue
from control_plane.orchestration.residency_check import NO_RESIDENCY
from control_plane.orchestration.waiting import (
    KnownAgent,
    Waiting,
    WaitReason,
    classify_busy,
    classify_wait,
)
from control_plane.store.models import AgentRow, AttemptRow, EventRow, FlowRunRow, StepRunRow
from control_plane.store.tx import Tx, record_event
from control_plane.usecases import limits
from control_plane.usecases.attempts import assign_attempt, fail_unschedulable
from control_plane.usecases.environments import residency_for_steps
from meridian.core.kinds import EventKind
from meridian.core.selectors import Selector, parse_selector
from meridian.core.spec import StepSpec
from meridian.core.states import AttemptState

# Waiting reasons explained per pass at most: a burst of thousands of queued attempts is
# explained over a few passes (the next one is scheduled at once) instead of in one commit.
MAX_WAITING_EVENTS_PER_PASS = 200
# Planned attempts found no longer queued that one pass reads before it leaves the rest to the
# next (a cancelled run's attempts leave the queue as passes meet them, or at the next sweep).
MAX_STALE_PER_PASS = 1000
_ID_CHUNK = 500
_AGAIN = dt.timedelta(seconds=0.5)

T = TypeVar("T")


@functools.lru_cache(maxsize=4096)
def cached_selector(text: str) -> Selector:
    return parse_selector(text)


def scheduling_pass(
    tx: Tx,
    slots: Sequence[AgentSlot],
    *,
    tiebreak: int = 0,
    ready: ReadyQueue | None = None,
) -> dt.datetime | None:
    """Run one pass; returns when the next stored timer falls due (None: no timer).

    ``ready``: the dispatcher's queue, updated here (assigned and vanished attempts leave it);
    without one the queued attempts are read from the store (a pass on its own, as in tests).
    """
    if ready is None:
        ready = ReadyQueue(load_ready(tx))
    again = False
    if len(ready) and has_free_slot(slots):
        again = _assign(tx, ready, slots, tiebreak)
    again = _explain_waiting(tx, ready, slots) or again
    if ready.expired(tx.now):
        _expire(tx, ready, slots)
    following = ready.next_timer(tx.now)
    if again:
        soon = tx.now + _AGAIN
        following = soon if following is None else min(following, soon)
    return following


def queue_and_assign(
    tx: Tx,
    reserved: Sequence[AgentSlot],
    usecase: Callable[..., T],
    *args: Any,
    tiebreak: int = 0,
    **kwargs: Any,
) -> T:
    """Run ``usecase(tx, *args, **kwargs)``, then assign the attempts it queued (in queue
    order) to ``reserved``: slots the caller holds for this transaction only, each one's
    ``capacity`` being the room held. Attempts not assigned stay queued (and announced to
    the ready queue) for the scheduling pass."""
    result = usecase(tx, *args, **kwargs)
    if reserved:
        assign_queued(tx, reserved, tiebreak=tiebreak)
    return result


def assign_queued(tx: Tx, reserved: Sequence[AgentSlot], *, tiebreak: int = 0) -> list[Assignment]:
    """Assign attempts this transaction queued (``tx.effects.queued``, due now) to the
    ``reserved`` slots; the assigned ones leave ``tx.effects.queued`` (the ready queue never
    sees them). Returns the assignments made."""
    due = (_ready_attempt(e) for e in tx.effects.queued if e.not_before <= tx.now)
    planned = plan(due, reserved, tiebreak=tiebreak)  # those taking limits wait for the pass
    if not planned:
        return []
    taken = _assign_planned(tx, planned)
    assigned = {a.attempt_id for a in taken}
    tx.effects.queued[:] = [e for e in tx.effects.queued if e.attempt_id not in assigned]
    return taken


def _ready_attempt(entry: ReadyEntry) -> ReadyAttempt:
    return ReadyAttempt(
        entry.attempt_id,
        cached_selector(entry.target),
        entry.provider,
        entry.residency,
        entry.limits,
        entry.result_store,
    )


def load_ready(tx: Tx, known: ReadyQueue | None = None) -> list[ReadyEntry]:
    """Every queued attempt as a ``ReadyEntry`` (a few columns each; the step's target, and
    the residency rules of steps whose inputs name stored results, are read only for
    attempts ``known`` does not have yet)."""
    rows = tx.session.execute(
        select(
            AttemptRow.id,
            AttemptRow.flow_run_id,
            AttemptRow.step_run_id,
            AttemptRow.provider,
            AttemptRow.queued_at,
            AttemptRow.not_before,
            AttemptRow.schedule_deadline,
        )
        .where(AttemptRow.state == AttemptState.QUEUED)
        .order_by(AttemptRow.queued_at)
    ).all()
    entries: list[ReadyEntry] = []
    missing = [row for row in rows if known is None or row.id not in known]
    specs = _specs(tx, {row.step_run_id for row in missing})
    residency = residency_for_steps(tx.session, {row.step_run_id for row in missing})
    for row in rows:
        entry = known.get(row.id) if known is not None else None
        if entry is None:
            entry = ReadyEntry(
                attempt_id=row.id,
                flow_run_id=row.flow_run_id,
                step_run_id=row.step_run_id,
                target=specs[row.step_run_id].target,
                provider=row.provider,
                queued_at=row.queued_at,
                not_before=row.not_before,
                deadline=row.schedule_deadline,
                residency=residency.get(row.step_run_id, NO_RESIDENCY),
                limits=specs[row.step_run_id].concurrency,
                result_store=specs[row.step_run_id].result_store,
            )
        entries.append(entry)
    return entries


def _specs(tx: Tx, step_ids: set[str]) -> dict[str, StepSpec]:
    ids, found = sorted(step_ids), {}
    for start in range(0, len(ids), _ID_CHUNK):
        query = select(StepRunRow.id, StepRunRow.spec).where(
            StepRunRow.id.in_(ids[start : start + _ID_CHUNK])
        )
        found.update({step_id: spec for step_id, spec in tx.session.execute(query)})
    return found


def _assign(tx: Tx, ready: ReadyQueue, slots: Sequence[AgentSlot], tiebreak: int) -> bool:
    """Assign what the plan says. Planned attempts that are no longer queued (cancelled,
    expired or assigned elsewhere) leave the queue and the plan is made again for the slots
    they left free, reading at most ``MAX_STALE_PER_PASS`` such rows; True when that bound
    was hit (plan again soon)."""
    free, stale = list(slots), 0
    admit = _limit_gate(tx)
    while True:
        due = (_ready_attempt(e) for e in ready.due(tx.now))
        planned = plan(due, free, tiebreak=tiebreak, admit=admit)
        if not planned:
            return False
        assigned = _assign_planned(tx, planned)
        _release_unassigned(tx, ready, planned, assigned)
        taken = [a.agent_id for a in assigned]
        ready.discard(a.attempt_id for a in planned)
        stale += len(planned) - len(taken)
        if len(taken) == len(planned):
            return False
        if stale >= MAX_STALE_PER_PASS:
            return True
        free = [
            dataclasses.replace(slot, in_use=slot.in_use + taken.count(slot.agent_id))
            for slot in free
        ]


def _limit_gate(tx: Tx) -> Callable[[ReadyAttempt], bool]:
    """``plan``'s ``admit`` for one pass: take the attempt's limit slots or queue it for them.
    A limit found full is remembered with its holders, so later attempts that do not hold it
    are turned away without another query."""
    full: dict[str, frozenset[str]] = {}

    def admit(attempt: ReadyAttempt) -> bool:
        holder = limits.attempt_holder(attempt.attempt_id)
        if any(holder not in full.get(name, (holder,)) for name in attempt.limits):
            return False
        blocked = limits.acquire(tx, holder, attempt.limits)
        if blocked is None:
            return True
        full[blocked.name] = blocked.holders
        return False

    return admit


def _release_unassigned(
    tx: Tx, ready: ReadyQueue, planned: Sequence[Assignment], assigned: Sequence[Assignment]
) -> None:
    """Planned attempts taking limits that were not assigned (no longer queued) give back
    the slots the plan just took for them."""
    taken = {a.attempt_id for a in assigned}
    for assignment in planned:
        entry = ready.get(assignment.attempt_id)
        if assignment.attempt_id not in taken and entry is not None and entry.limits:
            limits.release(tx, limits.attempt_holder(assignment.attempt_id))


def _assign_planned(tx: Tx, planned: Sequence[Assignment]) -> list[Assignment]:
    """Assign the planned attempts still queued; returns the assignments made."""
    ids = [a.attempt_id for a in planned]
    attempts = {
        a.id: a
        for a in tx.session.scalars(
            select(AttemptRow)
            .where(AttemptRow.id.in_(ids), AttemptRow.state == AttemptState.QUEUED)
            .with_for_update(skip_locked=True)
        )
    }
    steps = _by_id(tx, StepRunRow, {a.step_run_id for a in attempts.values()})
    runs = _by_id(tx, FlowRunRow, {a.flow_run_id for a in attempts.values()})
    agents = _by_id(tx, AgentRow, {a.agent_id for a in planned})
    taken: list[Assignment] = []
    for assignment in planned:
        attempt = attempts.get(assignment.attempt_id)
        if attempt is None:
            continue  # not queued any more (or locked by another replica's pass)
        step = steps[attempt.step_run_id]
        assign_attempt(tx, attempt, step, runs[attempt.flow_run_id], agents[assignment.agent_id])
        taken.append(assignment)
    return taken


def _explain_waiting(tx: Tx, ready: ReadyQueue, slots: Sequence[AgentSlot]) -> bool:
    """Record why unassigned attempts wait: one ``attempt.waiting`` event per run, target,
    provider, residency rules, result store and distinct reason (on the oldest such attempt),
    so a fan-out of thousands waiting for free slots writes one event, not thousands. Returns
    whether some groups were left for the next pass."""
    groups = list(ready.groups(tx.now))
    if not groups:
        return False
    _learn_recorded_reasons(tx, ready, {key[0] for key, _, _ in groups})
    known: list[KnownAgent] | None = None
    to_write: list[tuple[ReadyEntry, int, Any]] = []
    for group, first, count in groups:
        selector = cached_selector(first.target)
        if first.limits and (*group, WaitReason.CONCURRENCY_LIMIT.value) in ready.explained:
            continue  # said once; its place in line is not re-read every pass
        why = _waiting_for_limit(tx, first) if first.limits else None
        store = first.result_store
        why = why or classify_busy(selector, first.provider, slots, first.residency, store)
        if why is None:
            known = _known_agents(tx) if known is None else known
            why = classify_wait(selector, first.provider, slots, known, first.residency, store)
        if (*group, why.reason.value) in ready.explained:
            continue
        if len(to_write) >= MAX_WAITING_EVENTS_PER_PASS:
            break
        to_write.append((first, count, why))
    if not to_write:
        return False
    attempts = _by_id(tx, AttemptRow, {first.attempt_id for first, _, _ in to_write})
    steps = _by_id(tx, StepRunRow, {first.step_run_id for first, _, _ in to_write})
    for first, count, why in to_write:
        attempt = attempts.get(first.attempt_id)
        if attempt is None or attempt.state != AttemptState.QUEUED:
            ready.discard([first.attempt_id])  # the group's next attempt speaks next pass
            continue
        _record_waiting(tx, attempt, steps[first.step_run_id], first, count, why)
        ready.explained.add((*first.group, why.reason.value))
    return len(to_write) >= MAX_WAITING_EVENTS_PER_PASS


def _waiting_for_limit(tx: Tx, entry: ReadyEntry) -> Waiting | None:
    """The limit a queued attempt waits on, if that is what it waits for: it stands in a
    line, or (never asked yet: a full limit turned it away) it joins the line now."""
    holder = limits.attempt_holder(entry.attempt_id)
    position = limits.waiting_position(tx, holder, entry.limits)
    if position is None:
        blocked = limits.acquire(tx, holder, entry.limits)
        position = None if blocked is None else blocked.position
    return None if position is None else Waiting(WaitReason.CONCURRENCY_LIMIT, position.message)


def _record_waiting(
    tx: Tx, attempt: AttemptRow, step: StepRunRow, first: ReadyEntry, count: int, why: Any
) -> None:
    note = f" ({count} queued attempts of this target)" if count > 1 else ""
    details = {
        "reason": why.reason.value,
        "target": first.target,
        "provider": first.provider,
        "attempts": count,
    }
    if first.residency:
        details["residency"] = first.group[3]
    if first.result_store:
        details["result_store"] = first.result_store
    record_event(
        tx,
        kind=EventKind.ATTEMPT_WAITING,
        flow_run_id=first.flow_run_id,
        step=step,
        attempt=attempt,
        message=f"{why.message}{note}",
        details=details,
    )
    tx.effects.touched_runs.add(first.flow_run_id)


def _learn_recorded_reasons(tx: Tx, ready: ReadyQueue, run_ids: set[str]) -> None:
    """Read the waiting reasons already stored for runs the queue has not seen yet (once per
    run: later ones are added as they are written)."""
    new = run_ids - ready.explained_runs
    if new:
        ready.explained |= _recorded_reasons(tx, new)
        ready.explained_runs |= new


def _recorded_reasons(tx: Tx, run_ids: set[str]) -> set[ExplainedKey]:
    """(run, target, provider, residency, result store, reason) of the waiting events already
    written: a handful per run, so reading them all is cheap."""
    found: set[ExplainedKey] = set()
    ids = sorted(run_ids)
    for start in range(0, len(ids), _ID_CHUNK):
        rows = tx.session.execute(
            select(EventRow.flow_run_id, EventRow.details).where(
                EventRow.flow_run_id.in_(ids[start : start + _ID_CHUNK]),
                EventRow.kind == EventKind.ATTEMPT_WAITING.value,
            )
        )
        for run_id, details in rows:
            d = details or {}
            key = (run_id or "", str(d.get("target", "")), str(d.get("provider", "")))
            constraints = (str(d.get("residency", "")), str(d.get("result_store", "")))
            found.add((*key, *constraints, str(d.get("reason", ""))))
    return found


def _known_agents(tx: Tx) -> list[KnownAgent]:
    return [
        KnownAgent(
            agent_id=row.id,
            name=row.name,
            environment=row.environment,
            labels={str(k): str(v) for k, v in (row.labels or {}).items()},
            providers=frozenset(str(p) for p in row.providers or ()),
            status=row.status,
            pinned_labels={str(k): str(v) for k, v in (row.pinned_labels or {}).items()},
        )
        for row in tx.session.scalars(select(AgentRow).where(AgentRow.revoked_at.is_(None)))
    ]


def _expire(tx: Tx, ready: ReadyQueue, slots: Sequence[AgentSlot]) -> None:
    """Fail the queued attempts whose schedule deadline passed."""
    ids = ready.pop_expired(tx.now)
    expired = tx.session.scalars(
        select(AttemptRow)
        .where(AttemptRow.id.in_(ids), AttemptRow.state == AttemptState.QUEUED)
        .with_for_update(skip_locked=True)
    ).all()
    if not expired:
        return
    known = _known_agents(tx)
    steps = _by_id(tx, StepRunRow, {a.step_run_id for a in expired})
    residency = residency_for_steps(tx.session, steps)
    for attempt in expired:
        step = steps[attempt.step_run_id]
        selector = cached_selector(step.spec.target)
        rules = residency.get(step.id, NO_RESIDENCY)
        explanation = classify_wait(
            selector, attempt.provider, slots, known, rules, step.spec.result_store
        ).message
        waited = step.spec.schedule_timeout_s
        message = f"{explanation} (waited {waited:g}s; raise schedule_timeout to wait longer)"
        fail_unschedulable(tx, attempt, step, message)


def _by_id(tx: Tx, model: Any, ids: set[str]) -> dict[str, Any]:
    rows = tx.session.scalars(select(model).where(model.id.in_(list(ids))))
    return {row.id: row for row in rows}
