"""Clean-up of runs and their stored results: delete a run (or expire it), and the durable
queue of stored objects to delete at their sites (``result_deletions``, docs/results.md).

The control plane never touches a store: it queues what must go, and the housekeeping loop
(``scheduler/housekeeping.py``) asks a connected agent of the object's environment to delete
it. A queued row stays until that agent confirms, so a restart or a disconnected site loses
nothing; a row that keeps failing is given up after ``MAX_TRIES`` sends, with an audit record.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, or_, select
from sqlalchemy.orm import Session

from control_plane import audit
from control_plane.orchestration.housekeeping import StoreTally, uri_digest
from control_plane.store.models import (
    AgentRow,
    ApprovalRow,
    AttemptRow,
    EventRow,
    FlowRunRow,
    LogRow,
    ResultDeletionRow,
    StepRunRow,
)
from control_plane.store.queries import resolve_run_id
from control_plane.store.tx import Tx
from meridian.core.errors import ConflictError, MeridianError, NotFound, ValidationError
from meridian.core.resultref import MAX_MARKER_DEPTH, REF_MARKER, ResultRef, marker_ref
from meridian.core.states import LIVE_ATTEMPT, TERMINAL_RUN

log = logging.getLogger(__name__)

# Sends of one deletion without a confirmation before it is given up.
MAX_TRIES = 5
# Stored references read per query while a run is deleted or a sweep snapshots them.
REF_PAGE = 1000
# References read per store call while a sweep snapshots them (only digests are kept).
SNAPSHOT_PAGE = 5000
MAX_REASON = 500


@dataclass(frozen=True)
class RunDeleted:
    flow_run_id: str
    queued: int  # stored objects queued for deletion at their sites
    kept: int  # stored objects another run's step still refers to (a cached reuse)


@dataclass(frozen=True)
class PendingDeletion:
    id: int
    store: str
    uri: str
    size: int


# ---- deleting a run ---------------------------------------------------------------------


def delete_run(tx: Tx, run_id: str, reason: str) -> RunDeleted:
    """Delete a finished run: its history (events, logs, attempts, approvals, step runs, the
    run) goes, and each stored result object of its steps is queued for deletion at its site,
    all in this one transaction, with a ``run.deleted`` audit record.

    An object another step run still refers to is NOT queued: a CACHED step of a later run
    reuses the reference of the run it was cached from (``cached_from_run_id``), so its
    ``result_ref_json`` points at this run's object; deleting it would break that run. Such
    objects are checked by URI among the step runs with the same reference digest
    (``result_ref_sha256``, indexed) and counted as ``kept``; so are objects a step of a run
    still in progress takes as an input. Transfers stay: they are the egress ledger.
    """
    run = tx.session.get(FlowRunRow, resolve_run_id(tx.session, run_id), with_for_update=True)
    if run is None:
        raise NotFound(f"flow run {run_id} does not exist")
    if run.state not in TERMINAL_RUN:
        raise ConflictError(
            f"run {run.id} is {run.state.value}: only a finished run (COMPLETED, FAILED, "
            "CANCELLED or CRASHED) can be deleted; cancel it first"
        )
    live = _live_attempts(tx.session, run.id)
    if live:
        # A CRASHED run's steps may still run on their agents (only its runner is gone).
        raise ConflictError(
            f"run {run.id} is {run.state.value} but {live} of its attempts still run on their "
            "agents; cancel it first (`meridian runs cancel`)"
        )
    deleted = _delete_run_rows(tx, run, "run deleted")
    _audit_deleted(tx, run, deleted, reason[:MAX_REASON], audit.CLI)
    return deleted


def expire_runs(tx: Tx, retention_days: float, limit: int) -> list[RunDeleted]:
    """Delete up to ``limit`` runs that ended more than ``retention_days`` ago, oldest first,
    as ``delete_run`` does (audited as the system, reason "retention"). 0 days: keep all."""
    if retention_days <= 0 or limit <= 0:
        return []
    cutoff = tx.now - dt.timedelta(days=retention_days)
    # A cancelled or crashed run may have no end time: then its creation counts.
    ended = func.coalesce(FlowRunRow.ended_at, FlowRunRow.created_at)
    runs = tx.session.scalars(
        select(FlowRunRow)
        .where(FlowRunRow.state.in_(list(TERMINAL_RUN)), ended < cutoff)
        .order_by(ended)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    expired = []
    for run in runs:
        if _live_attempts(tx.session, run.id):
            continue  # a crashed run whose steps still run: expired once they end
        deleted = _delete_run_rows(tx, run, "run expired")
        why = f"retention: ended more than {retention_days:g} days ago"
        _audit_deleted(tx, run, deleted, why, audit.SYSTEM)
        expired.append(deleted)
    return expired


def _audit_deleted(tx: Tx, run: FlowRunRow, deleted: RunDeleted, reason: str, actor: str) -> None:
    audit.records.run_changed(
        tx.session,
        "run.deleted",
        run,
        tx.now,
        actor=actor,
        state=run.state.value,
        reason=reason,
        objects_queued=deleted.queued,
        objects_kept=deleted.kept,
    )


def _live_attempts(session: Session, run_id: str) -> int:
    return int(
        session.scalar(
            select(func.count())
            .select_from(AttemptRow)
            .where(AttemptRow.flow_run_id == run_id, AttemptRow.state.in_(list(LIVE_ATTEMPT)))
        )
        or 0
    )


def _delete_run_rows(tx: Tx, run: FlowRunRow, reason: str) -> RunDeleted:
    session = tx.session
    refs = {r.uri: r for r in _stored_refs(session, run.id)}
    still_used = _referred_elsewhere(session, run.id, list(refs.values()))
    still_used |= _inputs_of_live_runs(session, run.id, set(refs) - still_used)
    queued = [r for uri, r in refs.items() if uri not in still_used]
    session.add_all(
        ResultDeletionRow(
            environment=r.environment,
            store=r.store,
            uri=r.uri,
            size=r.size,
            reason=reason,
            flow_run_id=run.id,
            created_at=tx.now,
            tries=0,
            last_error="",
        )
        for r in queued
    )
    # Children before parents: attempts and approvals and step runs name the run by key.
    for table in (EventRow, LogRow, AttemptRow, ApprovalRow, StepRunRow):
        session.execute(delete(table).where(table.flow_run_id == run.id))
    session.delete(run)
    session.flush()
    return RunDeleted(run.id, len(queued), len(refs) - len(queued))


def _stored_refs(session: Session, run_id: str) -> Iterator[ResultRef]:
    """The references the run's step runs hold, read a page at a time; one that does not
    parse (it never should) is skipped with a warning rather than blocking the deletion."""
    after = ""
    while True:
        rows = session.execute(
            select(StepRunRow.id, StepRunRow.result_ref_json)
            .where(
                StepRunRow.flow_run_id == run_id,
                StepRunRow.result_ref_json.is_not(None),
                StepRunRow.id > after,
            )
            .order_by(StepRunRow.id)
            .limit(REF_PAGE)
        ).all()
        for step_id, text in rows:
            ref = _parse_ref(text)
            if ref is None:
                log.warning("step run %s holds an unreadable result reference", step_id)
            else:
                yield ref
        if len(rows) < REF_PAGE:
            return
        after = rows[-1][0]


def _parse_ref(text: str | None) -> ResultRef | None:
    try:
        return ResultRef.from_json(text or "")
    except ValidationError:
        return None


def _ref_digests(ref: ResultRef) -> set[str]:
    # The column holds the object's sha256; the digest of the reference's own JSON too, so
    # the check holds whichever of the two a writer stored.
    return {ref.sha256, hashlib.sha256(ref.to_json().encode()).hexdigest()}


def _referred_elsewhere(session: Session, run_id: str, refs: Sequence[ResultRef]) -> set[str]:
    """URIs of ``refs`` that a step run of another run refers to as well."""
    used: set[str] = set()
    wanted = {r.uri for r in refs}
    for start in range(0, len(refs), REF_PAGE // 2):
        digests = set().union(*(_ref_digests(r) for r in refs[start : start + REF_PAGE // 2]))
        texts = session.scalars(
            select(StepRunRow.result_ref_json).where(
                StepRunRow.result_ref_sha256.in_(digests), StepRunRow.flow_run_id != run_id
            )
        )
        for text in texts:
            ref = _parse_ref(text)
            if ref is not None and ref.uri in wanted:
                used.add(ref.uri)
    return used


def _inputs_of_live_runs(session: Session, run_id: str, wanted: set[str]) -> set[str]:
    """URIs of ``wanted`` that a step of another run still in progress takes as an input
    (``-p x=@result:RUN/STEP``, a parent's result handed to a child): deleting them now would
    fail that step. They are kept; once no live run needs them, ``results gc`` finds them
    (their run is gone) and removes them."""
    if not wanted:
        return set()
    used: set[str] = set()
    texts = session.scalars(
        select(StepRunRow.input_refs_json)
        .join(FlowRunRow, FlowRunRow.id == StepRunRow.flow_run_id)
        .where(
            FlowRunRow.state.not_in(list(TERMINAL_RUN)),
            StepRunRow.flow_run_id != run_id,
            StepRunRow.input_refs_json.is_not(None),
        )
        .execution_options(yield_per=REF_PAGE)
    )
    for text in texts:
        try:
            values = json.loads(text or "[]")
        except ValueError:
            continue
        for value in values if isinstance(values, list) else ():
            uri = value.get("uri") if isinstance(value, dict) else None
            if uri in wanted:
                used.add(uri)
    used |= {ref.uri for ref in parameter_refs_of_live_runs(session, exclude=run_id)} & wanted
    return used


def parameter_refs_of_live_runs(session: Session, exclude: str = "") -> Iterator[ResultRef]:
    """The references that runs in progress take as parameters (``-p x=@result:RUN/STEP``):
    their body may pass them to a step at any time, so the objects must outlive a deletion
    of the producing run and a collection until those runs end. Only runs whose parameters
    hold a marker are read and parsed."""
    texts = session.scalars(
        select(FlowRunRow.parameters_json)
        .where(
            FlowRunRow.state.not_in(list(TERMINAL_RUN)),
            FlowRunRow.id != exclude,
            FlowRunRow.parameters_json.contains(REF_MARKER, autoescape=True),
        )
        .execution_options(yield_per=REF_PAGE)
    )
    for text in texts:
        try:
            parameters = json.loads(text or "{}")
        except (ValueError, RecursionError):
            continue  # unreadable: names no object
        yield from _markers_tolerantly(parameters)


def _markers_tolerantly(value: Any) -> Iterator[ResultRef]:
    """The references ``value`` marks; a malformed marker (run parameters are not checked for
    them) is skipped on its own, so one bad run never stops a deletion or a collection and the
    good references next to it stay protected."""
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if depth > MAX_MARKER_DEPTH or not isinstance(item, dict | list):
            continue
        if isinstance(item, dict) and REF_MARKER in item:
            try:
                ref = marker_ref(item)
            except MeridianError:
                continue
            if ref is not None:
                yield ref
            continue
        children = item.values() if isinstance(item, dict) else item
        pending.extend((child, depth + 1) for child in children)


# ---- the deletion queue -----------------------------------------------------------------


def environments_with_deletions(session: Session) -> list[str]:
    return list(session.scalars(select(ResultDeletionRow.environment).distinct()))


def claim_deletions(
    tx: Tx,
    environment: str,
    stores: Collection[str],
    *,
    limit: int,
    resend_after_s: float,
) -> list[PendingDeletion]:
    """Up to ``limit`` queued deletions of ``environment`` in ``stores`` that were never sent
    or whose last send had no answer within ``resend_after_s``, marked sent now.

    A row already sent ``MAX_TRIES`` times is given up instead: deleted, logged, and audited
    (``results.deletion_abandoned``) with its last error, so an operator can remove it by hand.
    """
    if not stores or limit <= 0:
        return []
    resend_before = tx.now - dt.timedelta(seconds=resend_after_s)
    rows = tx.session.scalars(
        select(ResultDeletionRow)
        .where(
            ResultDeletionRow.environment == environment,
            ResultDeletionRow.store.in_(list(stores)),
            or_(ResultDeletionRow.sent_at.is_(None), ResultDeletionRow.sent_at < resend_before),
        )
        .order_by(ResultDeletionRow.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    claimed = []
    for row in rows:
        if row.tries >= MAX_TRIES:
            _abandon(tx, row)
            continue
        row.tries += 1
        row.sent_at = tx.now
        claimed.append(PendingDeletion(row.id, row.store, row.uri, row.size))
    return claimed


def _abandon(tx: Tx, row: ResultDeletionRow) -> None:
    why = row.last_error or "no agent confirmed it"
    log.warning(
        "giving up deleting %s (store %s in %s) after %d tries: %s",
        row.uri,
        row.store,
        row.environment,
        row.tries,
        why,
    )
    audit.append(
        tx.session,
        actor=audit.SYSTEM,
        action="results.deletion_abandoned",
        subject=row.uri[:255],
        details={
            "environment": row.environment,
            "store": row.store,
            "uri": row.uri,
            "flow_run_id": row.flow_run_id,
            "reason": row.reason,
            "tries": row.tries,
            "last_error": why[:MAX_REASON],
        },
        now=tx.now,
    )
    tx.session.delete(row)


def settle_deletions(tx: Tx, deleted: Collection[int], failed: Mapping[int, str]) -> int:
    """An agent's answer: rows it deleted go (a missing object counts as deleted); failed
    rows keep their place with the error, to be sent again after the resend delay.
    Returns how many rows were removed."""
    removed = 0
    if deleted:
        result = tx.session.execute(
            delete(ResultDeletionRow).where(ResultDeletionRow.id.in_(list(deleted)))
        )
        removed = int(getattr(result, "rowcount", 0) or 0)
    for row_id, error in failed.items():
        row = tx.session.get(ResultDeletionRow, row_id)
        if row is not None:
            row.last_error = error[:MAX_REASON]
    return removed


def pending_deletions(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(ResultDeletionRow)) or 0)


# ---- garbage collection -----------------------------------------------------------------


def live_runs(session: Session) -> set[str]:
    """Runs with an attempt not ended yet: their objects may be committed before the report
    naming them arrives, so a sweep never counts them as orphans."""
    return set(
        session.scalars(
            select(AttemptRow.flow_run_id)
            .where(AttemptRow.state.in_(list(LIVE_ATTEMPT)))
            .distinct()
        )
    )


def referenced_page(
    session: Session, after: str, environments: Collection[str], limit: int = SNAPSHOT_PAGE
) -> tuple[set[int], str]:
    """One page of stored references (by step run id after ``after``): the digests of the
    URIs of those in ``environments`` (``orchestration.housekeeping.uri_digest``), and the
    cursor of the next page ("" at the end). A step run's result and the references its
    inputs name both count: an object of a deleted run that another run took as an input is
    not an orphan while that run is recorded. A sweep keeps only digests: about 70 bytes per
    reference in memory, whatever the URIs' length."""
    rows = session.execute(
        select(StepRunRow.id, StepRunRow.result_ref_json, StepRunRow.input_refs_json)
        .where(
            or_(StepRunRow.result_ref_json.is_not(None), StepRunRow.input_refs_json.is_not(None)),
            StepRunRow.id > after,
        )
        .order_by(StepRunRow.id)
        .limit(limit)
    ).all()
    digests = set()
    for _, result_text, inputs_text in rows:
        for environment, uri in (_where(result_text), *_input_places(inputs_text)):
            if uri and environment in environments:
                digests.add(uri_digest(uri))
    return digests, (rows[-1][0] if len(rows) == limit else "")


def referenced_by_live_parameters(session: Session, environments: Collection[str]) -> set[int]:
    """Digests of the URIs of ``environments`` that runs in progress take as parameters: not
    orphans even when the run that produced them was deleted."""
    return {
        uri_digest(ref.uri)
        for ref in parameter_refs_of_live_runs(session)
        if ref.environment in environments
    }


def _input_places(text: str | None) -> list[tuple[str, str]]:
    """(environment, URI) of each reference a step run's ``input_refs_json`` lists."""
    try:
        values = json.loads(text or "[]")
    except ValueError:
        return []
    if not isinstance(values, list):
        return []
    return [_where(json.dumps(value)) for value in values if isinstance(value, dict)]


def _where(text: str | None) -> tuple[str, str]:
    """(environment, URI) of a stored reference. Only these matter here, so it is not
    validated in full; one that is not even JSON names no object."""
    try:
        value = json.loads(text or "")
    except ValueError:
        return "", ""
    if not isinstance(value, dict):
        return "", ""
    environment, uri = value.get("environment"), value.get("uri")
    return (
        environment if isinstance(environment, str) else "",
        uri if isinstance(uri, str) else "",
    )


def known_environments(session: Session) -> list[str]:
    """Environments with an enrolled agent that is not revoked."""
    return sorted(
        session.scalars(
            select(AgentRow.environment).where(AgentRow.revoked_at.is_(None)).distinct()
        )
    )


def record_collection(
    tx: Tx,
    *,
    dry_run: bool,
    environment: str,
    older_than_s: float,
    tallies: Sequence[StoreTally],
    skipped: Sequence[str],
) -> None:
    """Audit a garbage collection (``results.collected``): what each store held and lost."""
    audit.append(
        tx.session,
        actor=audit.CLI,
        action="results.collected",
        subject=environment or "*",
        details={
            "dry_run": dry_run,
            "older_than_s": older_than_s,
            "stores": [
                {
                    "environment": t.environment,
                    "store": t.store,
                    "objects": t.objects,
                    "orphans": t.orphans,
                    "orphan_bytes": t.orphan_bytes,
                    "deleted": t.deleted,
                    "errors": len(t.errors),
                }
                for t in tallies
            ],
            "skipped": list(skipped),
        },
        now=tx.now,
    )
