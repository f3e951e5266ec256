"""Submitting step calls: new step runs with their first attempt, or the stored result of a
call the run made before (resume replays the body; completed steps are not run again).

A call's inputs may name stored results (``input_refs``, docs/results.md): each must be one
this control plane recorded in a run the submitter may read, and data residency must leave an
agent that may read them (``usecases.input_refs``); they are stored on the step run
(``input_refs_json``) and its attempts are queued with their residency rules. A completed
step's result may itself be a reference (``result_ref_json``); answers carry it instead of
``result_json``, and caching across runs reuses it."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import JSON, Table, bindparam, func, insert, select

from control_plane.orchestration.scopes import normalize
from control_plane.orchestration.values import StepSubmission, SubmittedStep
from control_plane.store.ids import new_id, new_ids
from control_plane.store.models import AttemptRow, FlowRunRow, StepRunRow
from control_plane.store.tx import (
    Tx,
    announce_queued_rows,
    move_step,
    record_event,
    record_events,
)
from control_plane.usecases.environments import refs_text, residency_for_steps
from control_plane.usecases.input_refs import check_recorded, check_residency, constrain_queued
from control_plane.usecases.limits import check_limits_exist
from control_plane.usecases.result_store_check import check_result_stores
from meridian.core.errors import ConflictError, NotFound
from meridian.core.kinds import EventKind
from meridian.core.spec import DEFAULT_SCHEDULE_TIMEOUT_S, StepSpec
from meridian.core.states import TERMINAL_STEP, AttemptState, RunState, StepState


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def submit_steps(
    tx: Tx,
    run_id: str,
    submissions: Sequence[StepSubmission],
    *,
    outcome_bytes: int | None = None,
    full_answers: int = 0,
    caller: Sequence[str] = (),
    result_stores: Mapping[str, Collection[str]] | None = None,
) -> list[SubmittedStep]:
    """Store each call as a new step run with its first attempt queued, or answer with the
    step run its key already names (a retried request, a resumed run).

    ``caller``: the submitter's environment scope (empty: unscoped); the references new calls
    name must come from runs that the run's scope (or else ``caller``) covers. A call refused
    for data residency raises ``ResidencyRefusal`` (its caller audits it). ``result_stores``:
    the stores each connected agent advertised (by agent id; None: unknown), to refuse a call
    naming a store that no agent matching it has (``usecases.result_store_check``).

    New step runs, their attempts and their events are inserted in bulk (one executemany per
    table): a 10,000-call fan-out is one transaction of a few statements. The stored outcomes
    of calls that had ended come back with their answers, at most ``outcome_bytes`` of them
    (None: no limit) except for the first ``full_answers`` calls; the others are marked
    ``outcome_omitted`` (the caller asks for them again).
    """
    run = tx.session.get(FlowRunRow, run_id, with_for_update=True)
    if run is None:
        raise NotFound(f"flow run {run_id} does not exist")
    if run.state != RunState.RUNNING:
        raise ConflictError(f"flow run {run_id} is {run.state}; only RUNNING runs take new steps")
    known = _known_steps(tx, run_id, [s.key for s in submissions])
    scope = cache_scope(run.scope)
    unseen = [s for s in submissions if s.key not in known]
    check_recorded(tx, tuple(run.scope) or tuple(caller), unseen)
    check_limits_exist(tx, {name for s in unseen for name in s.spec.concurrency})
    hits = _cache_hits(tx, scope, [s for s in unseen if s.cache_key])
    to_run = [s for s in unseen if s.key not in hits]
    check_result_stores(tx, to_run, result_stores)
    residency = check_residency(tx, run_id, to_run)
    fresh: dict[str, _NewStep] = {}
    ids = iter(new_ids(2 * (len(submissions) - len(known))))  # a step run and its attempt
    result = []
    for sub in submissions:
        inputs_digest = digest(sub.inputs_json)
        refs = refs_text(sub.input_refs)
        step = known.get(sub.key)
        if step is not None:
            _check_same_inputs(run_id, sub.key, step.inputs_digest, inputs_digest)
            _check_same_refs(run_id, sub.key, step.input_refs_json, refs)
            state = _reopen_after_resume(tx, run, step)
            result.append(SubmittedStep(sub.key, step.id, state, existing=True))
            continue
        new = fresh.get(sub.key)
        repeated = new is not None
        if new is not None:  # the same key twice in one call: one step run
            _check_same_inputs(run_id, sub.key, new.inputs_digest, inputs_digest)
            _check_same_refs(run_id, sub.key, new.refs, refs)
        else:
            hit = hits.get(sub.key)
            new = fresh[sub.key] = _NewStep(next(ids), next(ids), sub, inputs_digest, hit, refs)
        state = StepState.PENDING if new.hit is None else StepState.CACHED
        result.append(SubmittedStep(sub.key, new.step_id, state, existing=repeated))
    if fresh:
        _insert_new_steps(tx, run_id, scope, list(fresh.values()))
        constrain_queued(
            tx, {n.step_id: residency[n.sub.key] for n in fresh.values() if n.sub.key in residency}
        )
    return _with_outcomes(tx, result, outcome_bytes, full_answers)


def cache_scope(scope: Sequence[str]) -> str:
    """The stored form of a run's environment scope on its step runs ("" = unscoped)."""
    return ",".join(normalize(scope))


@dataclass(frozen=True)
class _CacheHit:
    """The completed step run whose result a call reuses."""

    step_run_id: str
    flow_run_id: str
    key: str
    result_json: str | None
    ended_at: dt.datetime
    # Set instead of result_json when the result stayed at its site: the copy reuses it too.
    result_ref_json: str | None = None
    result_ref_sha256: str | None = None


def _cache_hits(tx: Tx, scope: str, subs: Sequence[StepSubmission]) -> dict[str, _CacheHit]:
    """For each call with a cache key: the newest COMPLETED step run with that key, in a run
    of the same environment scope (one team never reads another's results), that completed
    within the call's expiration. Keyed by the call's step key; calls without a hit are absent.

    Only COMPLETED step runs count: a failed step is never reused, and a reused (CACHED) one
    is not a source either, so a result's age is always that of the run that computed it."""
    newest: dict[str, tuple[str, dt.datetime]] = {}
    keys = sorted({s.cache_key for s in subs})
    for i in range(0, len(keys), _LOOKUP_CHUNK):
        query = (
            select(StepRunRow.cache_key, StepRunRow.id, StepRunRow.ended_at)
            .where(
                StepRunRow.cache_key.in_(keys[i : i + _LOOKUP_CHUNK]),
                StepRunRow.cache_scope == scope,
                StepRunRow.state == StepState.COMPLETED,
                StepRunRow.ended_at.is_not(None),
            )
            .order_by(StepRunRow.ended_at.desc())
        )
        for cache_key, step_id, ended_at in tx.session.execute(query):
            if cache_key is not None and ended_at is not None:
                newest.setdefault(cache_key, (step_id, ended_at))
    fresh: dict[str, str] = {}
    for sub in subs:
        found = newest.get(sub.cache_key)
        if found is None:
            continue
        age = tx.now - found[1]
        if sub.cache_expires_after_s and age >= dt.timedelta(seconds=sub.cache_expires_after_s):
            continue
        fresh[sub.key] = found[0]
    if not fresh:
        return {}
    sources: dict[str, _CacheHit] = {}
    ids = sorted(set(fresh.values()))
    for i in range(0, len(ids), _LOOKUP_CHUNK):
        read = select(
            StepRunRow.id,
            StepRunRow.flow_run_id,
            StepRunRow.key,
            StepRunRow.result_json,
            StepRunRow.ended_at,
            StepRunRow.result_ref_json,
            StepRunRow.result_ref_sha256,
        ).where(StepRunRow.id.in_(ids[i : i + _LOOKUP_CHUNK]))
        for row in tx.session.execute(read):
            step_id, run_id, key, result_json, ended_at, ref_json, ref_sha256 = row
            assert ended_at is not None  # selected above for having ended
            if ref_json is None:
                result_json = result_json or ""
            sources[step_id] = _CacheHit(
                step_id, run_id, key, result_json, ended_at, ref_json, ref_sha256
            )
    return {key: sources[step_id] for key, step_id in fresh.items()}


# Ended steps whose outcomes are read per statement: a few rows at a time, so that reading
# stops close to the byte budget (a result may be megabytes).
_OUTCOME_CHUNK = 20


def _with_outcomes(
    tx: Tx, answers: list[SubmittedStep], budget: int | None, full: int
) -> list[SubmittedStep]:
    """``answers`` with the stored outcome of each ended step, in order, while they fit."""
    # Ended: known steps, and new calls that reused a cached result.
    ended = [i for i, a in enumerate(answers) if a.state in TERMINAL_STEP]
    spent, out = 0, list(answers)
    for start in range(0, len(ended), _OUTCOME_CHUNK):
        chunk = ended[start : start + _OUTCOME_CHUNK]
        ids = [answers[i].step_run_id for i in chunk]
        query = select(
            StepRunRow.id, StepRunRow.result_json, StepRunRow.error, StepRunRow.result_ref_json
        ).where(StepRunRow.id.in_(ids))
        stored = {row[0]: (row[1] or "", row[2], row[3] or "") for row in tx.session.execute(query)}
        for i in chunk:
            result_json, error, ref_json = stored[answers[i].step_run_id]
            size = len(result_json.encode()) + len(ref_json)
            size += len(repr(error.to_json())) if error else 0
            if budget is not None and i >= full and spent and spent + size > budget:
                out[i] = dataclasses.replace(answers[i], outcome_omitted=True)
                continue
            spent += size
            out[i] = dataclasses.replace(
                answers[i], result_json=result_json, error=error, result_ref_json=ref_json
            )
    return out


# Keys looked up per statement: well below every database's bound on bound parameters.
_LOOKUP_CHUNK = 900


@dataclass(frozen=True)
class _Known:
    """What an answer for a key seen before needs: a few of the step run's columns, not its
    ORM row (a retried 10,000-call request would otherwise load and decode every spec, and
    every result however large; outcomes are read afterwards, within the answer's budget)."""

    id: str
    inputs_digest: str
    state: StepState
    ended_at: dt.datetime | None
    input_refs_json: str | None


def _known_steps(tx: Tx, run_id: str, keys: list[str]) -> dict[str, _Known]:
    known: dict[str, _Known] = {}
    columns = (
        StepRunRow.id,
        StepRunRow.inputs_digest,
        StepRunRow.state,
        StepRunRow.ended_at,
        StepRunRow.input_refs_json,
    )
    for i in range(0, len(keys), _LOOKUP_CHUNK):
        chunk = keys[i : i + _LOOKUP_CHUNK]
        query = select(StepRunRow.key, *columns).where(
            StepRunRow.flow_run_id == run_id, StepRunRow.key.in_(chunk)
        )
        known.update((row[0], _Known(*row[1:])) for row in tx.session.execute(query))
    return known


def _check_same_inputs(run_id: str, key: str, stored: str, submitted: str) -> None:
    if stored != submitted:
        raise ConflictError(
            f"step key {key!r} was already submitted in run {run_id} with different "
            "inputs (a changed input digest is never silently reused); give calls with "
            "different inputs different keys"
        )


def _check_same_refs(run_id: str, key: str, stored: str | None, submitted: str | None) -> None:
    if stored != submitted:
        raise ConflictError(
            f"step key {key!r} was already submitted in run {run_id} with different input "
            "references (the stored results its inputs name); give calls with different "
            "inputs different keys"
        )


@dataclass(frozen=True)
class _NewStep:
    step_id: str
    attempt_id: str
    sub: StepSubmission
    inputs_digest: str
    hit: _CacheHit | None = None  # set when the call reuses a cached result
    refs: str | None = None  # the stored form of the call's input references


_STEPS = cast(Table, StepRunRow.__table__)
_ATTEMPTS = cast(Table, AttemptRow.__table__)
# The spec column's stored form (``StepSpecJSON``: a JSON object) bound as it is, so a map's
# shared spec is converted once instead of once per row.
_INSERT_STEPS = insert(_STEPS).values(spec=bindparam("stored_spec", type_=JSON()))


def _insert_new_steps(tx: Tx, run_id: str, scope: str, new: list[_NewStep]) -> None:
    """Step runs (PENDING) and their first attempts (QUEUED), with the events ``_new_step``
    and ``queue_attempt`` would record, in one executemany per table. The spec's stored form
    is computed once per distinct spec: the calls of a map share one. A call that reuses a
    cached result is stored CACHED at once, with that result, no attempt and a
    ``step.cached`` event naming where the result came from."""
    now = tx.now
    step_rows, attempt_rows, pending, queued = [], [], [], []
    stored_specs: dict[int, dict[str, Any]] = {}
    for item in new:
        sub, spec, hit = item.sub, item.sub.spec, item.hit
        stored = stored_specs.get(id(spec))
        if stored is None:
            stored = stored_specs[id(spec)] = spec.to_json()
        step_rows.append(
            {
                "id": item.step_id,
                "flow_run_id": run_id,
                "key": sub.key,
                "name": spec.name or sub.key,
                "stored_spec": stored,
                "inputs_json": sub.inputs_json,
                "inputs_digest": item.inputs_digest,
                "state": StepState.PENDING if hit is None else StepState.CACHED,
                "result_json": None if hit is None else hit.result_json,
                "result_ref_json": None if hit is None else hit.result_ref_json,
                "result_ref_sha256": None if hit is None else hit.result_ref_sha256,
                "input_refs_json": item.refs,
                "created_at": now,
                "ended_at": None if hit is None else now,
                "last_fencing_token": 0,
                "cache_key": sub.cache_key or None,
                "cache_scope": scope if sub.cache_key else None,
                "cached_from_run_id": None if hit is None else hit.flow_run_id,
                "cached_from_step_key": None if hit is None else hit.key,
            }
        )
        event = {"flow_run_id": run_id, "step_run_id": item.step_id, "step_key": sub.key,
                 "from_state": None, "details": None, "created_at": now}  # fmt: skip
        if hit is not None:
            pending.append(_cached_event(event, hit))
            continue
        timeout = dt.timedelta(seconds=spec.schedule_timeout_s or DEFAULT_SCHEDULE_TIMEOUT_S)
        attempt_rows.append(
            {
                "id": item.attempt_id,
                "step_run_id": item.step_id,
                "flow_run_id": run_id,
                "number": 1,
                "state": AttemptState.QUEUED,
                "provider": spec.provider,
                "queued_at": now,
                "not_before": now,
                "schedule_deadline": now + timeout,
                "fencing_token": 0,
            }
        )
        pending.append(
            {
                **event,
                "attempt_id": None,
                "kind": EventKind.STEP_PENDING.value,
                "to_state": StepState.PENDING.value,
                "message": _pending_message(spec),
            }
        )
        queued.append(
            {
                **event,
                "attempt_id": item.attempt_id,
                "kind": EventKind.ATTEMPT_QUEUED.value,
                "to_state": AttemptState.QUEUED.value,
                "message": "attempt 1 queued",
            }
        )
    tx.session.execute(_INSERT_STEPS, step_rows)
    if attempt_rows:
        tx.session.execute(insert(_ATTEMPTS), attempt_rows)
        announce_queued_rows(
            tx,
            attempt_rows,
            {i.step_id: i.sub.spec.target for i in new},
            {i.step_id: i.sub.spec.concurrency for i in new if i.sub.spec.concurrency},
            {i.step_id: i.sub.spec.result_store for i in new if i.sub.spec.result_store},
        )
        tx.effects.wake_scheduler = True
    record_events(tx, pending + queued)  # the order single submissions always had
    tx.effects.touched_runs.add(run_id)


def _cached_event(event: dict[str, Any], hit: _CacheHit) -> dict[str, Any]:
    """The ``step.cached`` event of a call that reused ``hit``'s result."""
    return {
        **event,
        "attempt_id": None,
        "kind": EventKind.STEP_CACHED.value,
        "to_state": StepState.CACHED.value,
        "message": f"reused from run {hit.flow_run_id} (step {hit.key[:200]!r})",
        "details": {
            "source_flow_run_id": hit.flow_run_id,
            "source_step_run_id": hit.step_run_id,
            "source_step_key": hit.key,
            "source_completed_at": hit.ended_at.isoformat(),
        },
    }


def _pending_message(spec: StepSpec) -> str:
    return f"target {spec.target or '(any)'!r}, provider {spec.provider!r}"


def _reopen_after_resume(tx: Tx, run: FlowRunRow, known: _Known) -> StepState:
    """A step that failed before the run was resumed runs again when the body reaches it;
    completed steps keep their stored result (that is what makes resume cheap and safe).
    Returns the step's state after that."""
    if known.state not in (StepState.FAILED, StepState.CANCELLED) or run.resumed_at is None:
        return known.state
    if known.ended_at is not None and known.ended_at > run.resumed_at:
        return known.state
    step = tx.session.get(StepRunRow, known.id)
    assert step is not None  # read in this transaction, under the run's lock
    attempts = tx.session.scalar(
        select(func.max(AttemptRow.number)).where(AttemptRow.step_run_id == step.id)
    )
    step.ended_at = None
    step.error = None
    move_step(tx, step, StepState.PENDING, "run resumed: running it again")
    queue_attempt(tx, step, int(attempts or 0) + 1, tx.now)
    return step.state


def queue_attempt(tx: Tx, step: StepRunRow, number: int, not_before: dt.datetime) -> AttemptRow:
    """Queue attempt ``number`` of ``step``, to start no earlier than ``not_before``."""
    schedule_timeout = step.spec.schedule_timeout_s or DEFAULT_SCHEDULE_TIMEOUT_S
    attempt = AttemptRow(
        id=new_id(),
        step_run_id=step.id,
        flow_run_id=step.flow_run_id,
        number=number,
        state=AttemptState.QUEUED,
        provider=step.spec.provider,
        queued_at=tx.now,
        not_before=not_before,
        schedule_deadline=not_before + dt.timedelta(seconds=schedule_timeout),
        fencing_token=0,
    )
    tx.session.add(attempt)
    delay = (not_before - tx.now).total_seconds()
    record_event(
        tx,
        kind=EventKind.ATTEMPT_QUEUED,
        flow_run_id=step.flow_run_id,
        step=step,
        attempt=attempt,
        to_state=AttemptState.QUEUED,
        message=f"attempt {number} queued" + (f", starts in {delay:.2f}s" if delay > 0 else ""),
    )
    if step.input_refs_json:
        # Under the residency rules as they are now (a rule changed since the step was
        # submitted applies to its later attempts).
        constrain_queued(tx, residency_for_steps(tx.session, [step.id]))
    tx.effects.touched_runs.add(step.flow_run_id)
    tx.effects.wake_scheduler = True
    return attempt
