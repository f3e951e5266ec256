"""Outcome triggers in a real store (SQLite, and PostgreSQL when configured): a run of one
deployment ending in a chosen state runs another, in the transaction that ends it, with the
upstream run's id and result as parameters; once per upstream run; a refusal never stops the
upstream run from ending."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from sqlalchemy import select

from control_plane import audit
from control_plane.orchestration.deployment_specs import (
    MAX_OUTCOME_CHAIN,
    DeploymentSpec,
    OutcomeTrigger,
)
from control_plane.store.db import Store
from control_plane.store.models import FlowRunRow
from control_plane.store.tx import move_run
from control_plane.usecases import deployments
from control_plane.usecases.deployments import TriggerSource, create_deployment, trigger_deployment
from control_plane.usecases.runs import cancel_run, crash_runs_with_lapsed_leases, finish_run
from meridian.core.errorinfo import ErrorClass, ErrorInfo
from meridian.core.errors import ValidationError
from meridian.core.states import RunState
from tests.control_plane.usecases.helpers import T0, run_at

ANY: dict[str, Any] = {"kind": "any"}


def schema(*names: str) -> dict[str, Any]:
    return {
        "version": 1,
        "accepts_any": False,
        "parameters": [{"name": n, "type": ANY, "required": True} for n in names],
    }


def deploy(store: Store, name: str, params: tuple[str, ...] = (), *triggers: Any) -> None:
    spec = DeploymentSpec(
        name=name,
        flow_name=name,
        entrypoint=f"flows.py:{name}",
        bundle_sha256="b" * 64,
        parameter_schema=schema(*params),
        triggers=tuple(triggers),
    )
    run_at(store, T0, create_deployment, spec)


def start_upstream(store: Store) -> str:
    """A run of "extract", moved to RUNNING as its hosted runner would."""
    outcome, _ = run_at(
        store, T0, trigger_deployment, "extract", {}, source=TriggerSource("api", "token:ops")
    )

    def running(tx: Any) -> None:
        run = tx.session.get(FlowRunRow, outcome.flow_run_id)
        run.runner_lease_expires_at = T0 + dt.timedelta(seconds=60)
        move_run(tx, run, RunState.RUNNING)

    run_at(store, T0, running)
    return str(outcome.flow_run_id)


def runs_of(store: Store, flow: str) -> list[FlowRunRow]:
    return store.run_sync(
        lambda s: list(s.scalars(select(FlowRunRow).where(FlowRunRow.flow_name == flow)))
    )


def records(store: Store) -> list[Any]:
    return list(store.run_sync(lambda s: audit.list_records(s, limit=1000)))


FAILED = ErrorInfo(type="KeyError", message="'day'", error_class=ErrorClass.PERMANENT)


def test_a_failed_run_triggers_the_deployment_waiting_on_it_with_its_id(store: Store) -> None:
    deploy(store, "extract")
    on_failure = OutcomeTrigger("extract", ("FAILED",), run_id_parameter="failed_run")
    deploy(store, "alert", ("failed_run",), on_failure)
    upstream = start_upstream(store)
    state, _ = run_at(
        store, T0, finish_run, upstream, succeeded=False, result_json="", error=FAILED
    )
    assert state == "FAILED"
    (alert,) = runs_of(store, "alert")
    assert json.loads(alert.parameters_json) == {"failed_run": upstream}
    assert alert.trigger == "outcome" and alert.state == "PENDING"
    assert (alert.trigger_detail or {})["detail"]["upstream_run_id"] == upstream
    (record,) = [r for r in records(store) if r.subject == alert.id]
    assert record.action == "deployment.triggered" and record.actor == f"run:{upstream}"
    # A retried FinishRun ends nothing new and triggers nothing new.
    run_at(store, T0, finish_run, upstream, succeeded=False, result_json="", error=FAILED)
    assert len(runs_of(store, "alert")) == 1


def test_the_result_is_passed_and_other_states_trigger_nothing(store: Store) -> None:
    deploy(store, "extract")
    deploy(
        store,
        "load",
        ("source", "rows"),
        OutcomeTrigger("extract", run_id_parameter="source", result_parameter="rows"),
    )
    deploy(store, "alert", ("failed_run",), OutcomeTrigger("extract", ("FAILED",), "failed_run"))
    upstream = start_upstream(store)
    run_at(store, T0, finish_run, upstream, succeeded=True, result_json="[1, 2]", error=None)
    (load,) = runs_of(store, "load")
    assert json.loads(load.parameters_json) == {"source": upstream, "rows": [1, 2]}
    assert runs_of(store, "alert") == []


def test_crashed_and_cancelled_runs_trigger_too(store: Store) -> None:
    deploy(store, "extract")
    trigger = OutcomeTrigger("extract", ("CRASHED", "CANCELLED"), run_id_parameter="upstream")
    deploy(store, "cleanup", ("upstream",), trigger)
    crashed = start_upstream(store)
    later = T0 + dt.timedelta(minutes=10)
    run_at(store, later, crash_runs_with_lapsed_leases, T0, 60.0)
    cancelled = start_upstream(store)
    run_at(store, later, cancel_run, cancelled, "operator said so")  # no live attempt
    got = sorted(json.loads(r.parameters_json)["upstream"] for r in runs_of(store, "cleanup"))
    assert got == sorted([crashed, cancelled])


def test_a_downstream_refusal_is_audited_and_the_upstream_run_still_ends(store: Store) -> None:
    deploy(store, "extract")
    # "report" needs a parameter the trigger does not pass: every trigger of it is refused.
    deploy(store, "report", ("day",), OutcomeTrigger("extract", ("FAILED",)))
    upstream = start_upstream(store)
    state, _ = run_at(
        store, T0, finish_run, upstream, succeeded=False, result_json="", error=FAILED
    )
    assert state == "FAILED" and runs_of(store, "report") == []
    (refused,) = [r for r in records(store) if r.action == "trigger.refused"]
    assert refused.actor == f"run:{upstream}" and "day" in json.loads(refused.details)["reason"]
    triggered = [r.subject for r in records(store) if r.action == "deployment.triggered"]
    assert triggered == [upstream]


def test_only_the_downstream_deployments_current_version_counts(store: Store) -> None:
    deploy(store, "extract")
    on_failure = OutcomeTrigger("extract", ("FAILED",), run_id_parameter="failed_run")
    deploy(store, "alert", ("failed_run",), on_failure)

    def fail_upstream() -> None:
        upstream = start_upstream(store)
        run_at(store, T0, finish_run, upstream, succeeded=False, result_json="", error=FAILED)

    fail_upstream()
    assert len(runs_of(store, "alert")) == 1
    deploy(store, "alert", ("failed_run",))  # version 2: no trigger
    fail_upstream()
    assert len(runs_of(store, "alert")) == 1
    deploy(store, "alert", ("failed_run",), on_failure)  # version 3: the trigger again
    fail_upstream()
    assert len(runs_of(store, "alert")) == 2


def test_a_cycle_of_outcome_triggers_is_refused_at_deploy_time(store: Store) -> None:
    deploy(store, "ping")
    deploy(store, "pong", (), OutcomeTrigger("ping"))
    deploy(store, "pang", (), OutcomeTrigger("pong"))
    with pytest.raises(ValidationError, match="cycle: ping → pong → ping"):
        deploy(store, "ping", (), OutcomeTrigger("pong"))
    with pytest.raises(ValidationError, match="cycle: ping → pong → pang → ping"):
        deploy(store, "ping", (), OutcomeTrigger("pang"))
    deploy(store, "pong")  # pong no longer waits on ping: ping may now wait on pong
    deploy(store, "ping", (), OutcomeTrigger("pong"))


def test_a_cycle_that_exists_anyway_stops_after_max_outcome_chain_runs(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two deploys at once can each pass the deploy-time check: simulated by skipping it.
    monkeypatch.setattr(deployments, "_check_cycle", lambda tx, spec: None)
    deploy(store, "extract")
    deploy(store, "ping", (), OutcomeTrigger("extract"))
    deploy(store, "pong", (), OutcomeTrigger("ping"))
    deploy(store, "ping", (), OutcomeTrigger("extract"), OutcomeTrigger("pong"))
    run_id = start_upstream(store)
    ended = 0
    while run_id:
        finish(store, run_id)
        ended += 1
        pending = [
            r for r in runs_of(store, "ping") + runs_of(store, "pong") if r.state == "PENDING"
        ]
        assert len(pending) <= 1 and ended <= MAX_OUTCOME_CHAIN + 1
        run_id = pending[0].id if pending else ""
    assert ended == MAX_OUTCOME_CHAIN + 1  # extract's run, then the chain of 20
    (refused,) = [r for r in records(store) if r.action == "trigger.refused"]
    assert "chain of 20 outcome-triggered runs" in json.loads(refused.details)["reason"]


def finish(store: Store, run_id: str) -> None:
    def running(tx: Any) -> None:
        run = tx.session.get(FlowRunRow, run_id)
        if run.state == "PENDING":
            run.runner_lease_expires_at = T0 + dt.timedelta(seconds=60)
            move_run(tx, run, RunState.RUNNING)

    run_at(store, T0, running)
    run_at(store, T0, finish_run, run_id, succeeded=True, result_json="", error=None)


def test_a_deployment_may_wait_on_several_upstreams_once_each(store: Store) -> None:
    deploy(store, "extract")
    deploy(store, "other")
    both = (OutcomeTrigger("extract", run_id_parameter="up"), OutcomeTrigger("other", (), "up"))
    deploy(store, "load", ("up",), *both)
    extract = start_upstream(store)
    finish(store, extract)
    other, _ = run_at(store, T0, trigger_deployment, "other", {}, source=TriggerSource("api", "t"))
    finish(store, str(other.flow_run_id))
    ups = sorted(json.loads(r.parameters_json)["up"] for r in runs_of(store, "load"))
    assert ups == sorted([extract, str(other.flow_run_id)])
    with pytest.raises(ValidationError, match="upstream deployment extract more than once"):
        deploy(store, "load", ("up",), *both, OutcomeTrigger("extract", ("FAILED",), "up"))
