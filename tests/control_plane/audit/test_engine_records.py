"""The orchestration and enrollment code writes audit records in the transaction of the change.

Uses the shared ``store`` fixture (one bundle, agents a1/aws and g1/gcp); SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from agent.identity import generate_key_and_csr
from control_plane import audit
from control_plane.auth.ca import CertificateAuthority
from control_plane.auth.enrollment import create_join_token_row, enroll_agent
from control_plane.store.db import Store
from control_plane.store.models import AgentRow, AuditRecordRow, FlowRunRow, JoinTokenRow
from control_plane.store.tx import Tx
from control_plane.usecases.agents import expire_agent_leases
from control_plane.usecases.runs import cancel_run, resume_run, retry_run
from control_plane.usecases.steps import digest
from tests.control_plane.usecases.helpers import (
    T0,
    apply,
    attempts,
    new_run,
    report,
    run_at,
    schedule,
    submit,
)


def records(store: Store, action: str | None = None) -> list[tuple[str, str, str, dict[str, Any]]]:
    def load(session: Session) -> list[AuditRecordRow]:
        query = select(AuditRecordRow).order_by(AuditRecordRow.id)
        if action:
            query = query.where(AuditRecordRow.action == action)
        return list(session.scalars(query))

    return [(r.actor, r.action, r.subject, json.loads(r.details)) for r in store.run_sync(load)]


def test_run_triggered_names_flow_digest_and_bundle(store: Store) -> None:
    run_id = new_run(store)
    [(actor, _, subject, details)] = records(store, "run.triggered")
    assert (actor, subject) == ("cli", run_id)
    assert details == {
        "flow": "etl",
        "entrypoint": "flows.py:etl",
        "trigger": "manual",
        "parameters_digest": digest("{}"),
        "bundle_sha256": "b" * 64,
    }
    assert store.run_sync(audit.verify_chain).ok


def test_finished_attempt_names_agent_identity_resource_and_digests(store: Store) -> None:
    def identify_a1(session: Session) -> None:
        session.execute(
            update(AgentRow).where(AgentRow.id == "a1").values(cert_fingerprint="f" * 64)
        )
        used = {"created_at": T0, "expires_at": T0, "used_at": T0, "used_by_agent_id": "a1"}
        session.add(JoinTokenRow(id="tok1", secret_hash="x", environment="aws-demo", **used))

    store.run_sync(identify_a1)
    run_id = new_run(store)
    step_id = submit(store, run_id)
    schedule(store)
    attempt = attempts(store, step_id)[0]
    later = T0 + dt.timedelta(seconds=5)
    reports = [
        report(attempt, 1, "running"),
        report(attempt, 2, "handle", handle_json="{}", resource_id="arn:aws:ecs:task/1"),
        # The agent saw it end at ``later``: that, not the arrival, is the recorded end.
        report(attempt, 3, "finished", at=later, outcome="SUCCEEDED", result_json='{"rows": 3}'),
    ]
    apply(store, "a1", reports, later)
    [(actor, _, subject, d)] = records(store, "attempt.finished")
    assert (actor, subject) == ("agent:a1", attempt.id)
    assert d["agent"] == {
        "agent_id": "a1",
        "name": "a1",
        "cert_fingerprint": "f" * 64,
        "join_token_id": "tok1",
        "labels": {"cloud": "aws"},
    }
    assert d["environment"] == "aws-demo" and d["provider"] == "process"
    assert d["resource_id"] == "arn:aws:ecs:task/1" and d["bundle_sha256"] == "b" * 64
    assert d["inputs_digest"] == digest('{"args": [1], "kwargs": {}}')
    assert d["result_digest"] == digest('{"rows": 3}')
    assert d["outcome"] == "SUCCEEDED" and d["error_class"] == "" and d["attempt"] == 1
    assert d["ended_at"] == audit.format_at(later) and d["queued_at"] == audit.format_at(T0)


def test_lost_attempt_is_recorded_by_the_system(store: Store) -> None:
    run_id = new_run(store)
    step_id = submit(store, run_id, on_agent_lost="fail")
    schedule(store)
    run_at(store, T0 + dt.timedelta(hours=1), expire_agent_leases, 30.0, T0)
    [(actor, _, subject, d)] = records(store, "attempt.finished")
    assert actor == "system" and subject == attempts(store, step_id)[0].id
    assert d["outcome"] == "LOST" and d["error_class"] == "lost_agent" and d["result_digest"] == ""


def test_cancel_resume_retry_are_recorded_in_order(store: Store) -> None:
    run_id = new_run(store)
    submit(store, run_id)  # stays QUEUED: the cancel ends it at once
    run_at(store, T0, cancel_run, run_id, "operator said so")
    run_at(store, T0, resume_run, run_id)
    new, _ = run_at(store, T0, retry_run, run_id)
    actions = [(a, s) for _, a, s, _ in records(store)]
    assert actions[0] == ("run.triggered", run_id)
    assert actions[1] == ("run.cancelled", run_id)
    assert actions[2][0] == "attempt.finished"  # the queued attempt the cancel ended
    assert actions[3:] == [
        ("run.resumed", run_id),
        ("run.triggered", new.id),
        ("run.retried", run_id),
    ]
    cancelled = records(store, "run.cancelled")[0][3]
    assert cancelled == {"flow": "etl", "reason": "operator said so", "previous_state": "RUNNING"}
    assert records(store, "run.resumed")[0][3]["previous_state"] == "CANCELLED"
    assert records(store, "run.retried")[0][3]["retried_as"] == new.id
    assert store.run_sync(audit.verify_chain).ok


def test_a_rolled_back_cancel_leaves_neither_the_change_nor_its_record(store: Store) -> None:
    run_id = new_run(store)
    submit(store, run_id)

    def cancel_then_fail(session: Session) -> None:
        cancel_run(Tx(session, now=T0), run_id, "")
        raise RuntimeError("commit never happens")

    with pytest.raises(RuntimeError):
        store.run_sync(cancel_then_fail)
    assert store.run_sync(lambda s: s.get(FlowRunRow, run_id)).state == "RUNNING"
    assert [a for _, a, _, _ in records(store)] == ["run.triggered"]
    run_at(store, T0, cancel_run, run_id, "")  # the real one chains on without a gap
    report_ = store.run_sync(audit.verify_chain)
    assert report_.ok and report_.records == 3


def test_token_creation_and_enrollment_never_record_the_secret(
    store: Store, tmp_path: Path
) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    token = store.run_sync(create_join_token_row, "aws-prod", 600.0, T0)
    _, csr = generate_key_and_csr("edge-1")
    agent, _ = store.run_sync(
        lambda s: enroll_agent(
            s, ca, token=token, csr_pem=csr, name="edge-1", now=T0, validity=dt.timedelta(hours=1)
        )
    )
    token_id = token.removeprefix("mjt_").split(".")[0]
    secret = token.split(".", 1)[1]
    created, enrolled = records(store)
    expires = "2026-01-01T00:10:00.000000Z"
    assert created == (
        "cli",
        "token.created",
        token_id,
        {"environment": "aws-prod", "labels": {}, "expires_at": expires},
    )
    assert enrolled[:3] == (f"token:{token_id}", "agent.enrolled", agent.id)
    assert enrolled[3]["cert_fingerprint"] == agent.cert_fingerprint != ""
    assert enrolled[3]["join_token_id"] == token_id and enrolled[3]["environment"] == "aws-prod"
    raw = store.run_sync(lambda s: [r.details for r in s.scalars(select(AuditRecordRow))])
    assert all(secret not in text for text in raw)
