"""Hosted flow runners (decision 0018): hand runs to agents' runner slots, fence old runners,
and decide what a lost runner means for its run.

- ``assign_runners``: runs that want a runner (``wants_runner``, ``start_after`` due, not
  ended), oldest first, go to connected agents whose labels match ``runner_target`` and that
  have a free runner slot (``orchestration.runner_plan``). A deployment whose version says
  ``concurrency`` N holds a new run back while N of its runs are active. In one transaction the
  run takes the next ``runner_epoch``, its agent, a lease and a runner token bound to the epoch;
  the ``AssignRunner`` frame goes out after the commit.
- ``check_runner_epoch`` / ``fenced``: a runner call from an older epoch is refused.
- ``runner_lost``: the lease lapsed (or the runner process exited before finishing): resume
  by replay on another agent, or fail, per ``orchestration.runners.decide_runner_lost``.
- ``cancel_hosted_runner``: a cancelled hosted run's runner is told to stop and fenced.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import func, or_, select

from control_plane import audit
from control_plane.auth.api_token_store import issue_runner_token
from control_plane.orchestration.runner_plan import (
    RunnerDemand,
    RunnerHost,
    has_runner_host,
    plan_runners,
)
from control_plane.orchestration.runners import (
    OnRunnerLost,
    RunnerLost,
    RunnerPolicy,
    decide_runner_lost,
    is_superseded,
)
from control_plane.orchestration.values import AssignRunnerOut, CancelRunnerOut
from control_plane.store.ids import new_id
from control_plane.store.models import (
    AgentRow,
    BundleRow,
    DeploymentRow,
    DeploymentVersionRow,
    FlowRunRow,
)
from control_plane.store.tx import Tx, move_run, record_event
from control_plane.usecases import limits, run_limits
from control_plane.usecases.attempts import cancel_live_attempts
from control_plane.usecases.outcome_triggers import fire_outcome_triggers
from meridian.core.errorinfo import ErrorInfo
from meridian.core.errors import ConflictError, NotFound
from meridian.core.kinds import EventKind, RunnerNotStarted
from meridian.core.selectors import Selector, parse_selector
from meridian.core.states import TERMINAL_RUN, RunState

# CreateRun's trigger for `meridian run --remote`: a run that waits for a hosted runner.
REMOTE_TRIGGER = "remote"
# The first lease of a hand-out covers fetching the bundle and starting the process; the
# runner then renews with its own (shorter) lease.
FIRST_LEASE_S = 60.0
CANCEL_GRACE_S = 10.0
# Hand-outs whose runner never started that a run tolerates before they count as lost runners.
MAX_START_FAILURES = 5
START_FAILURES_KEY = "runner_start_failures"  # in the run's trigger_detail (no migration)
# Runs looked at per pass (oldest first): the rest wait for the next pass.
MAX_CANDIDATES = 500
# States in which a run may still get a runner; and those in which a runner holds a slot.
_OPEN = (RunState.PENDING, RunState.RUNNING, RunState.PAUSED)
_HOLDING = (RunState.PENDING, RunState.RUNNING, RunState.PAUSED, RunState.CANCELLING)
# A deployment run counts against its deployment's concurrency in these states.
_ACTIVE = (RunState.RUNNING, RunState.PAUSED, RunState.CANCELLING)

T = TypeVar("T")


@dataclass(frozen=True)
class RunnerEndpoint:
    """Where a hosted runner reaches the control plane: the client listener and its CA."""

    client_address: str = ""
    ca_certificate_pem: bytes = b""


# ---- creating a run that waits for a hosted runner -------------------------------------------


def create_hosted_run(
    tx: Tx,
    *,
    flow_name: str,
    entrypoint: str,
    parameters_json: str,
    bundle_sha256: str,
    runner_target: str,
    trigger: str = REMOTE_TRIGGER,
    scope: Sequence[str] = (),
    concurrency: Sequence[str] = (),
) -> FlowRunRow:
    """A run of an uploaded bundle that stays PENDING until an agent's runner takes it
    (``meridian run --remote``); deployments create theirs with ``trigger_deployment``."""
    parse_selector(runner_target)  # a typo is refused here, not found by nobody matching
    if tx.session.get(BundleRow, bundle_sha256) is None:
        raise NotFound(f"code bundle {bundle_sha256[:12]} has not been uploaded")
    if concurrency:
        limits.check_limits_exist(tx, concurrency, f"flow {flow_name}")
    policy = RunnerPolicy()
    return _add_hosted_run(
        tx,
        FlowRunRow(
            id=new_id(),
            flow_name=flow_name,
            entrypoint=entrypoint,
            trigger=trigger,
            parameters_json=parameters_json,
            bundle_sha256=bundle_sha256,
            scope=list(scope),
            runner_target=runner_target,
            on_runner_lost=str(policy.on_runner_lost),
            max_runner_resumes=policy.max_resumes,
            trigger_detail=run_limits.with_limits(None, concurrency),  # taken before a runner
        ),
    )


def hosted_copy(tx: Tx, original: FlowRunRow, trigger: str) -> FlowRunRow:
    """A new run of a hosted run's flow version, parameters, deployment, runner target and
    runner policy (``runs retry`` of a deployment's run): hosted too, reusing nothing."""
    return _add_hosted_run(
        tx,
        FlowRunRow(
            id=new_id(),
            flow_name=original.flow_name,
            entrypoint=original.entrypoint,
            trigger=trigger,
            parameters_json=original.parameters_json,
            bundle_sha256=original.bundle_sha256,
            scope=list(original.scope or []),
            deployment_id=original.deployment_id,
            deployment_version=original.deployment_version,
            runner_target=original.runner_target,
            on_runner_lost=original.on_runner_lost,
            max_runner_resumes=original.max_runner_resumes,
            trigger_detail=run_limits.with_limits(None, run_limits.flow_limits(original)),
        ),
    )


def _add_hosted_run(tx: Tx, run: FlowRunRow) -> FlowRunRow:
    """Store a new run that waits (PENDING) for a hosted runner, with its event and audit."""
    run.state = RunState.PENDING
    run.created_at = tx.now
    run.wants_runner = True
    run.runner_epoch = 0
    run.runner_resumes = 0
    tx.session.add(run)
    tx.session.flush()
    where = f" on an agent matching {run.runner_target!r}" if run.runner_target else ""
    record_event(
        tx,
        kind=EventKind.RUN_PENDING,
        flow_run_id=run.id,
        to_state=RunState.PENDING,
        message=f"{run.trigger} run of {run.flow_name} ({run.entrypoint}), waiting for a "
        f"hosted runner{where}",
    )
    audit.records.run_triggered(tx.session, run, actor=tx.actor)
    tx.effects.runners_wanted = True
    tx.effects.touched_runs.add(run.id)
    return run


def runs_on_hosted_runners(run: FlowRunRow) -> bool:
    """Whether ``run``'s body runs on hosted runners (a deployment's run, ``run --remote``),
    whether or not a runner holds it now. Only hosted runs carry a runner-lost policy."""
    return run.on_runner_lost is not None or run.runner_agent_id is not None


def reopen_for_runner(tx: Tx, run: FlowRunRow, message: str) -> None:
    """A resumed hosted run waits (PENDING) for a hosted runner again, like a new run: it
    queues behind its deployment's concurrency and takes its flow's limits before a runner
    is assigned; that runner replays the body (completed steps are reused). Whatever ran it
    before is fenced, and the automatic resumes after a lost runner count from zero again
    (this one is a person's decision)."""
    run.runner_epoch = int(run.runner_epoch or 0) + 1
    run.runner_resumes = 0
    if run.trigger_detail and START_FAILURES_KEY in run.trigger_detail:
        run.trigger_detail = {
            k: v for k, v in run.trigger_detail.items() if k != START_FAILURES_KEY
        }
    run.runner_lease_expires_at = None
    run.wants_runner = True
    move_run(tx, run, RunState.PENDING, message)
    tx.effects.runners_wanted = True


# ---- assignment --------------------------------------------------------------------------


def assign_runners(
    tx: Tx, hosts: Sequence[RunnerHost], endpoint: RunnerEndpoint
) -> dt.datetime | None:
    """Hand waiting runs to free runner slots; returns the next ``start_after`` to wake for.
    Local runs waiting for their flow's concurrency limits are started here too."""
    run_limits.start_waiting_runs(tx)
    candidates = _candidates(tx)
    next_start = tx.session.scalar(
        select(func.min(FlowRunRow.start_after)).where(
            FlowRunRow.wants_runner.is_(True),
            FlowRunRow.state.in_(list(_OPEN)),
            FlowRunRow.start_after > tx.now,
        )
    )
    if not candidates or not hosts:
        return next_start
    hosts = _with_held(tx, hosts)
    admitted = _admitted_by_concurrency(tx, candidates)
    demands = [
        RunnerDemand(run.id, _selector(run), run.runner_agent_id)
        for run in candidates
        # A run of a @flow(concurrency=...) takes its limits before it gets a runner.
        if run.id in admitted and run_limits.holds_limits(tx, run)
    ]
    by_id = {run.id: run for run in candidates}
    for placement in plan_runners(demands, hosts):
        _hand_out(tx, by_id[placement.flow_run_id], placement.agent_id, endpoint)
    return next_start


def _candidates(tx: Tx) -> list[FlowRunRow]:
    return list(
        tx.session.scalars(
            select(FlowRunRow)
            .where(
                FlowRunRow.wants_runner.is_(True),
                FlowRunRow.state.in_(list(_OPEN)),
                or_(FlowRunRow.start_after.is_(None), FlowRunRow.start_after <= tx.now),
            )
            .order_by(FlowRunRow.created_at, FlowRunRow.id)
            .limit(MAX_CANDIDATES)
        )
    )


def _with_held(tx: Tx, hosts: Sequence[RunnerHost]) -> list[RunnerHost]:
    """The hosts with how many bodies each runs now, counted from the store (the truth)."""
    held = dict(
        tx.session.execute(
            select(FlowRunRow.runner_agent_id, func.count())
            .where(
                FlowRunRow.runner_agent_id.in_([h.agent_id for h in hosts]),
                FlowRunRow.wants_runner.is_(False),
                FlowRunRow.state.in_(list(_HOLDING)),
            )
            .group_by(FlowRunRow.runner_agent_id)
        ).all()
    )
    return [
        RunnerHost(
            h.agent_id,
            h.name,
            h.environment,
            h.labels,
            h.runner_slots,
            int(held.get(h.agent_id, 0)),
            h.draining,
            h.degraded,
        )
        for h in hosts
    ]


def _selector(run: FlowRunRow) -> Selector:
    return parse_selector(run.runner_target or "")


def deployment_concurrency(tx_session: Any, deployment_id: str) -> int:
    """The ``concurrency`` of a deployment's current version (0 = unlimited)."""
    deployment = tx_session.get(DeploymentRow, deployment_id)
    if deployment is None:
        return 0
    version = tx_session.get(DeploymentVersionRow, (deployment_id, deployment.current_version))
    if version is None:
        return 0
    try:
        return max(0, int((version.spec or {}).get("concurrency", 0) or 0))
    except (TypeError, ValueError):
        return 0


def active_runs(tx_session: Any, deployment_id: str) -> int:
    """Runs of a deployment that hold a runner or are running, paused or being cancelled."""
    return int(
        tx_session.scalar(
            select(func.count()).where(
                FlowRunRow.deployment_id == deployment_id,
                or_(
                    FlowRunRow.state.in_(list(_ACTIVE)),
                    (FlowRunRow.wants_runner.is_(False))
                    & FlowRunRow.runner_agent_id.is_not(None)
                    & FlowRunRow.state.in_(list(_HOLDING)),
                ),
            )
        )
        or 0
    )


def _admitted_by_concurrency(tx: Tx, candidates: Iterable[FlowRunRow]) -> set[str]:
    """Candidates the deployment concurrency lets start now, in queue order. Runs already
    RUNNING or PAUSED (a lost runner being replaced) are active already: always admitted."""
    admitted: set[str] = set()
    room: dict[str, int] = {}
    for run in candidates:
        if run.deployment_id is None or run.state != RunState.PENDING:
            admitted.add(run.id)
            continue
        if run.deployment_id not in room:
            limit = deployment_concurrency(tx.session, run.deployment_id)
            room[run.deployment_id] = (
                limit - active_runs(tx.session, run.deployment_id) if limit else 1 << 30
            )
        if room[run.deployment_id] > 0:
            room[run.deployment_id] -= 1
            admitted.add(run.id)
    return admitted


def _hand_out(tx: Tx, run: FlowRunRow, agent_id: str, endpoint: RunnerEndpoint) -> None:
    run = tx.session.get(FlowRunRow, run.id, with_for_update=True) or run
    if not run.wants_runner or run.state not in _OPEN:
        return  # changed since it was read (cancelled)
    agent = tx.session.get(AgentRow, agent_id)
    name = agent.name if agent is not None else agent_id
    run.runner_epoch = int(run.runner_epoch or 0) + 1
    run.runner_agent_id = agent_id
    run.wants_runner = False
    run.runner_lease_expires_at = tx.now + dt.timedelta(seconds=FIRST_LEASE_S)
    record_event(
        tx,
        kind=EventKind.RUN_RUNNER_ASSIGNED,
        flow_run_id=run.id,
        message=f"flow runner assigned to agent {name} (runner epoch {run.runner_epoch})",
        details={"agent_id": agent_id, "runner_epoch": run.runner_epoch},
    )
    if run.state == RunState.PENDING:
        run.started_at = run.started_at or tx.now  # a resumed run keeps its first start
        move_run(tx, run, RunState.RUNNING, f"hosted flow runner starting on agent {name}")
    token = issue_runner_token(tx.session, run.id, tx.now, run.scope, epoch=run.runner_epoch)
    tx.effects.runner_frames.append(
        AssignRunnerOut(
            agent_id=agent_id,
            flow_run_id=run.id,
            runner_epoch=run.runner_epoch,
            bundle_sha256=run.bundle_sha256,
            entrypoint=run.entrypoint,
            runner_token=token,
            client_address=endpoint.client_address,
            ca_certificate_pem=endpoint.ca_certificate_pem,
        )
    )
    tx.effects.touched_runs.add(run.id)


def runner_waiting_for(
    session: Any, run: FlowRunRow, hosts: Sequence[RunnerHost] | None = None
) -> str:
    """Why a run that wants a runner has none yet ("" when it does not want one). ``hosts``:
    the connected agents offering runner slots (None: not known to the caller)."""
    if not run.wants_runner or run.state in TERMINAL_RUN:
        return ""
    if run.deployment_id and run.state == RunState.PENDING:
        limit = deployment_concurrency(session, run.deployment_id)
        active = active_runs(session, run.deployment_id)
        if limit and active >= limit:
            deployment = session.get(DeploymentRow, run.deployment_id)
            label = deployment.name if deployment is not None else run.deployment_id
            return (
                f"waiting for a runner slot: deployment {label} has {active} of {limit} runs active"
            )
    target = run.runner_target or ""
    if hosts is not None and not has_runner_host(parse_selector(target), hosts):
        return (
            f"waiting for an agent with runner slots matching {target!r}: no connected agent "
            "that matches offers any (start one with `meridian agent start ... --runner-slots N`)"
        )
    return f"waiting for a free runner slot on an agent matching {target!r}"


# ---- fencing ------------------------------------------------------------------------------


def check_runner_epoch(tx: Tx, run_id: str, epoch: int | None) -> None:
    """Refuse a call made by a runner of an older epoch (``epoch`` None: not a runner)."""
    if epoch is None:
        return
    run = tx.session.get(FlowRunRow, run_id)
    if run is None:
        raise NotFound(f"flow run {run_id} does not exist")
    if is_superseded(epoch, int(run.runner_epoch or 0)):
        raise ConflictError(f"superseded by runner epoch {run.runner_epoch}")


def fenced(usecase: Callable[..., T], epoch: int | None) -> Callable[..., T]:
    """``usecase(tx, run_id, ...)`` that first checks the caller's runner epoch, in the same
    transaction (so a hand-out cannot slip between the check and the change)."""
    if epoch is None:
        return usecase

    def run(tx: Tx, run_id: str, *args: Any, **kwargs: Any) -> T:
        check_runner_epoch(tx, run_id, epoch)
        return usecase(tx, run_id, *args, **kwargs)

    return run


# ---- a lost runner -------------------------------------------------------------------------


def is_hosted(run: FlowRunRow) -> bool:
    return run.runner_agent_id is not None


def runner_lost(tx: Tx, run: FlowRunRow, *, lost_at: dt.datetime, cause: str = "") -> bool:
    """Resume the run on another runner or fail it; returns whether it resumes."""
    policy = RunnerPolicy(
        OnRunnerLost(run.on_runner_lost or OnRunnerLost.RESUME),
        run.max_runner_resumes if run.max_runner_resumes is not None else 3,
    )
    facts = RunnerLost(_runner_agent_name(tx, run), lost_at, int(run.runner_resumes or 0))
    decision = decide_runner_lost(policy, facts)
    reason = f"{decision.reason} ({cause})" if cause else decision.reason
    _record_lost_runner(
        tx, run, reason, resume=decision.resume, lease_expired_at=lost_at.isoformat()
    )
    if decision.resume:
        # As a resume: the new runner replays the body; completed steps answer at once.
        run.runner_resumes = int(run.runner_resumes or 0) + 1
        run.resumed_at = tx.now
        _want_runner_again(tx, run)
    else:
        run.wants_runner = False
        cancel_live_attempts(tx, run, reason)
        run.ended_at = tx.now
        run.error = ErrorInfo(error_class="lost_agent", type="meridian.RunnerLost", message=reason)
        move_run(tx, run, RunState.FAILED, reason)
        fire_outcome_triggers(tx, run)  # deployments waiting on this run's failure
        tx.effects.runners_wanted = True  # its slot is free
    return decision.resume


def _runner_agent_name(tx: Tx, run: FlowRunRow) -> str:
    agent = tx.session.get(AgentRow, run.runner_agent_id) if run.runner_agent_id else None
    return agent.name if agent is not None else str(run.runner_agent_id)


def _record_lost_runner(
    tx: Tx, run: FlowRunRow, reason: str, *, resume: bool, **details: Any
) -> None:
    """The ``run.runner_lost`` event and audit record, and the lost runner fenced at once (it
    may only be cut off): its renewals and calls are refused from now on, not only after the
    next hand-out."""
    record_event(
        tx,
        kind=EventKind.RUN_RUNNER_LOST,
        flow_run_id=run.id,
        message=reason,
        details={
            "agent_id": run.runner_agent_id,
            "runner_epoch": run.runner_epoch,
            "resume": resume,
            **details,
        },
    )
    audit.records.run_changed(
        tx.session, "run.runner_lost", run, tx.now, reason=reason, resume=resume
    )
    run.runner_lease_expires_at = None
    run.runner_epoch = int(run.runner_epoch or 0) + 1
    tx.effects.touched_runs.add(run.id)


def _want_runner_again(tx: Tx, run: FlowRunRow) -> None:
    run.wants_runner = True  # runner_agent_id stays: the planner prefers another agent
    tx.effects.runners_wanted = True


def runner_exited(
    tx: Tx, agent_id: str, run_id: str, epoch: int, exit_code: int, message: str
) -> None:
    """A hosted runner's process ended: one that ended before its run did is lost now,
    without waiting for its lease. Reports of older epochs or other agents change nothing."""
    run = tx.session.get(FlowRunRow, run_id, with_for_update=True)
    if run is None or run.runner_agent_id != agent_id or run.wants_runner:
        return
    if int(run.runner_epoch or 0) != epoch or run.state not in (RunState.RUNNING, RunState.PAUSED):
        tx.effects.runners_wanted = True  # a slot may have been freed
        return
    tail = " ".join(message.split())[-300:]
    not_started = exit_code in {code.value for code in RunnerNotStarted}
    if not_started and _hand_out_again(tx, run, exit_code, tail):
        return
    cause = f"its process exited with code {exit_code}" + (f": {tail}" if tail else "")
    runner_lost(tx, run, lost_at=tx.now, cause=cause)


def _hand_out_again(tx: Tx, run: FlowRunRow, exit_code: int, why: str) -> bool:
    """A runner that never started (the agent had no free slot after all, or could not fetch
    the bundle or start the process) lost no work: the run waits for a runner again without
    using one of its resumes — up to ``MAX_START_FAILURES`` times, then it counts as lost.
    The epoch moves on, so a runner that did start after all (a fork whose answer was lost)
    is fenced."""
    detail = dict(run.trigger_detail or {})
    failures = int(detail.get(START_FAILURES_KEY, 0) or 0) + 1
    if failures > MAX_START_FAILURES:
        return False
    run.trigger_detail = {**detail, START_FAILURES_KEY: failures}
    reason = (
        f"the flow runner could not start on agent {_runner_agent_name(tx, run)} "
        f"(code {exit_code}: {why or 'no reason given'}); "
        f"waiting for a runner again (start failure {failures} of {MAX_START_FAILURES}, "
        "not counted as a resume)"
    )
    _record_lost_runner(tx, run, reason, resume=True, started=False)
    _want_runner_again(tx, run)
    return True


# ---- cancel ----------------------------------------------------------------------------------


def cancel_hosted_runner(tx: Tx, run: FlowRunRow, reason: str) -> None:
    """Stop a cancelled run's hosted runner (if it has one) and fence it: the epoch moves on,
    so even a runner that never gets the frame cannot touch the run again."""
    if not is_hosted(run):
        return
    had_runner = not run.wants_runner
    run.wants_runner = False
    old_epoch = int(run.runner_epoch or 0)
    run.runner_epoch = old_epoch + 1
    if had_runner and run.runner_agent_id:
        tx.effects.runner_frames.append(
            CancelRunnerOut(run.runner_agent_id, run.id, old_epoch, reason, CANCEL_GRACE_S)
        )
    tx.effects.runners_wanted = True
