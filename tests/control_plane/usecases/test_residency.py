"""Data residency against a real store (SQLite, and PostgreSQL when configured): admins set an
environment's rule (validated, audited); a submission no known agent may run under the rules of
its inputs is refused and the refusal audited in a transaction of its own; a step whose target
no agent matches yet is accepted and the scheduler then assigns it only to an allowed agent,
its waiting reason naming the rule; rules apply to attempts queued after they changed."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from sqlalchemy import select

from control_plane import audit
from control_plane.orchestration.matching import AgentSlot
from control_plane.orchestration.ready import ReadyQueue
from control_plane.store.db import Store
from control_plane.store.models import AgentRow, AuditRecordRow, EventRow, StepRunRow
from control_plane.usecases.agents import HelloIn, agent_connected
from control_plane.usecases.environments import (
    ResidencyRefusal,
    environment_policies,
    record_residency_refusal,
    set_residency,
)
from control_plane.usecases.scheduling import load_ready, scheduling_pass
from control_plane.usecases.steps import submit_steps
from meridian.core.errors import PermissionDenied, ValidationError
from meridian.core.residency import parse_rule
from meridian.core.states import AttemptState
from tests.control_plane.usecases.helpers import SLOTS, T0, attempts, new_run, run_as, run_at
from tests.control_plane.usecases.refs import REF, consumer, finish, produce

EU_RULE = "region in (eu-west-1)"


def audit_records(store: Store, action: str) -> list[AuditRecordRow]:
    return store.run_sync(
        lambda s: list(
            s.scalars(
                select(AuditRecordRow)
                .where(AuditRecordRow.action == action)
                .order_by(AuditRecordRow.id)
            )
        )
    )


def add_agent(
    store: Store,
    agent_id: str,
    environment: str,
    labels: dict[str, str],
    pinned: dict[str, str] | None = None,
) -> AgentSlot:
    """Enroll (its join token pinning ``pinned``) and connect one more agent; its free slots
    as the dispatcher would pass them."""
    store.run_sync(
        lambda s: s.add(
            AgentRow(id=agent_id, name=agent_id, environment=environment, labels={},
                     pinned_labels=pinned or {}, providers=[], capacity=0,
                     status="disconnected", cert_fingerprint="", enrolled_at=T0,
                     last_applied_seq=0)
        )
    )  # fmt: skip
    hello = HelloIn("0.1", labels, ("process",), 2, {}, "host", False)
    connected, _ = run_at(store, T0, agent_connected, agent_id, "", hello)
    assert connected.pinned_labels == (pinned or {})
    return AgentSlot(
        agent_id, agent_id, environment, connected.labels, frozenset({"process"}), 2, 0,
        pinned_labels=connected.pinned_labels,
    )  # fmt: skip


def test_an_admin_sets_a_rule_that_is_validated_canonical_and_audited(store: Store) -> None:
    policy, _ = run_as(
        store, "token:admin1", T0, set_residency, "aws-demo", "region in ( eu-west-1 )", "gdpr"
    )
    assert (policy.name, policy.residency, policy.agents) == ("aws-demo", EU_RULE, 1)
    listed = store.run_sync(environment_policies)
    assert [(p.name, p.residency, p.agents) for p in listed] == [
        ("aws-demo", EU_RULE, 1),
        ("gcp-demo", "", 1),
    ]
    assert [p.name for p in store.run_sync(environment_policies, ("gcp-demo",))] == ["gcp-demo"]
    (record,) = audit_records(store, "environment.residency_set")
    assert (record.actor, record.subject) == ("token:admin1", "aws-demo")
    assert json.loads(record.details) == {
        "environment": "aws-demo",
        "rule": EU_RULE,
        "pinned_labels_only": False,
        "previous": "",
        "previous_pinned_labels_only": False,
        "reason": "gdpr",
    }
    with pytest.raises(ValidationError, match="residency rule of environment 'aws-demo'"):
        run_at(store, T0, set_residency, "aws-demo", "region in (eu", "")
    with pytest.raises(ValidationError, match="not a valid environment name"):
        run_at(store, T0, set_residency, "bad name!", "site=x", "")
    with pytest.raises(PermissionDenied, match="scoped"):
        run_at(store, T0, set_residency, "aws-demo", "", "", ("gcp-demo",))
    # An empty rule removes it; an environment without agents and rule is not listed.
    run_at(store, T0, set_residency, "aws-demo", "", "lifted")
    run_at(store, T0, set_residency, "nowhere", "", "")
    assert [(p.name, p.residency) for p in store.run_sync(environment_policies)] == [
        ("aws-demo", ""),
        ("gcp-demo", ""),
    ]
    assert len(audit_records(store, "environment.residency_set")) == 3


def test_a_submission_no_agent_may_run_is_refused_and_the_refusal_stays_audited(
    store: Store,
) -> None:
    produce(store, new_run(store))
    run_at(store, T0, set_residency, "aws-demo", EU_RULE, "gdpr")
    run_id = new_run(store)
    with pytest.raises(ResidencyRefusal) as refused:
        run_at(store, T0, submit_steps, run_id, [consumer(target="cloud=gcp")])
    message = str(refused.value)
    for needle in ("'load#1'", "'aws-demo'", EU_RULE, "'gcp-demo'"):
        assert needle in message
    keys = store.run_sync(
        lambda s: list(s.scalars(select(StepRunRow.key).where(StepRunRow.flow_run_id == run_id)))
    )
    assert keys == []  # the submission rolled back
    # Its caller (the SubmitSteps servicer) records the refusal in a transaction of its own.
    run_as(store, "token:runner1", T0, record_residency_refusal, refused.value)
    (record,) = audit_records(store, "residency.refused")
    details = json.loads(record.details)
    assert (record.actor, record.subject) == ("token:runner1", run_id)
    assert details["step_key"] == "load#1" and details["rules"] == {"aws-demo": EU_RULE}
    assert details["environments"] == ["gcp-demo"] and EU_RULE in details["message"]
    assert store.run_sync(audit.verify_chain).ok


def test_a_reader_in_the_producing_environment_is_always_allowed(store: Store) -> None:
    produce(store, new_run(store))
    run_at(store, T0, set_residency, "aws-demo", EU_RULE, "")
    (answer,), _ = run_at(store, T0, submit_steps, new_run(store), [consumer(target="cloud=aws")])
    assert answer.state == "PENDING"


def test_an_unmatched_target_is_accepted_and_waits_for_an_allowed_reader(store: Store) -> None:
    produce(store, new_run(store))
    run_at(store, T0, set_residency, "aws-demo", EU_RULE, "")
    run_id = new_run(store)
    (answer,), queued = run_at(store, T0, submit_steps, run_id, [consumer(target="site=x")])
    (entry,) = queued.queued
    assert entry.residency == (parse_rule("aws-demo", EU_RULE),)
    us = add_agent(store, "x-us", "gcp-us", {"site": "x", "region": "us-east-1"})
    slots = [*SLOTS, us]
    _, effects = run_at(store, T0, scheduling_pass, slots)
    assert effects.assigns == []
    (waiting,) = store.run_sync(
        lambda s: list(
            s.scalars(
                select(EventRow).where(
                    EventRow.flow_run_id == run_id, EventRow.kind == "attempt.waiting"
                )
            )
        )
    )
    assert waiting.details is not None and waiting.details["reason"] == "residency"
    assert waiting.details["residency"] == f"aws-demo: {EU_RULE}"
    assert waiting.message.startswith(
        "waiting for an agent allowed to read results of environment 'aws-demo' under "
        f"residency rule '{EU_RULE}'"
    )
    eu = add_agent(store, "x-eu", "gcp-eu", {"site": "x", "region": "eu-west-1"})
    _, effects = run_at(store, T0 + dt.timedelta(seconds=1), scheduling_pass, [*slots, eu])
    (assign,) = effects.assigns
    assert (assign.agent_id, assign.step_run_id) == ("x-eu", answer.step_run_id)


def test_the_scheduler_never_assigns_to_an_agent_that_may_not_read(store: Store) -> None:
    produce(store, new_run(store))
    run_at(store, T0, set_residency, "aws-demo", "cloud=aws", "")
    run_id = new_run(store)
    calls = [consumer(f"load#{i}", target="") for i in (1, 2, 3)]  # any agent matches
    answers, _ = run_at(store, T0, submit_steps, run_id, calls)
    _, effects = run_at(store, T0, scheduling_pass, SLOTS)
    assert sorted(a.agent_id for a in effects.assigns) == ["a1", "a1"]  # g1 is free, not allowed
    third = [a for a in answers if a.step_run_id not in {x.step_run_id for x in effects.assigns}]
    assert attempts(store, third[0].step_run_id)[0].state == AttemptState.QUEUED


def test_a_changed_rule_applies_to_attempts_queued_after_the_change(store: Store) -> None:
    produce(store, new_run(store))
    run_id = new_run(store)
    _, before = run_at(store, T0, submit_steps, run_id, [consumer("early#1", target="cloud=gcp")])
    assert [e.residency for e in before.queued] == [()]
    run_at(store, T0, set_residency, "aws-demo", "cloud=aws", "")
    # A step already in the dispatcher's queue may still go to g1: the rule applies from its
    # next attempt on (or when the queue is rebuilt from the store at a control plane's start).
    ready = ReadyQueue(before.queued)
    _, effects = run_at(store, T0, scheduling_pass, SLOTS, ready=ready)
    (assign,) = effects.assigns
    assert assign.agent_id == "g1"
    rule = parse_rule("aws-demo", "cloud=aws")
    late, _ = run_at(store, T0, submit_steps, run_id, [consumer("late#1", target="")])
    rebuilt = {e.step_run_id: e.residency for e in run_at(store, T0, load_ready)[0]}
    assert rebuilt == {late[0].step_run_id: (rule,)}
    # A retry of the early step is queued under the rule now in force.
    early = attempts(store, assign.step_run_id)[0]
    # g1 may not report aws-demo's reference: the attempt fails and a retry is queued.
    effects = finish(store, early, ref_json=REF.to_json(), stores=())
    retry = attempts(store, assign.step_run_id)[1]
    assert retry.state == AttemptState.QUEUED
    assert [(e.attempt_id, e.residency) for e in effects.queued] == [(retry.id, (rule,))]


def test_a_pinned_labels_only_rule_ignores_the_labels_an_agent_claims(store: Store) -> None:
    produce(store, new_run(store))
    policy, _ = run_at(
        store, T0, set_residency, "aws-demo", EU_RULE, "gdpr", pinned_labels_only=True
    )
    assert policy.pinned_labels_only
    (listed,) = [p for p in store.run_sync(environment_policies) if p.name == "aws-demo"]
    assert listed.pinned_labels_only
    (record,) = audit_records(store, "environment.residency_set")
    assert json.loads(record.details)["pinned_labels_only"] is True
    # An agent that merely claims the region (its token pinned nothing) may not read.
    claims = add_agent(store, "x-claims", "gcp-eu", {"site": "x", "region": "eu-west-1"})
    with pytest.raises(ResidencyRefusal, match="pinned labels only"):
        run_at(store, T0, submit_steps, new_run(store), [consumer(target="site=x")])
    # One whose join token pinned it may: the submission is accepted and only it is given
    # the attempt, though the other is freer.
    eu = {"site": "x", "region": "eu-west-1"}
    pinned = add_agent(store, "x-pinned", "gcp-eu2", eu, pinned=eu)
    run_id = new_run(store)
    (answer,), _ = run_at(store, T0, submit_steps, run_id, [consumer(target="site=x")])
    busy = AgentSlot(**{**pinned.__dict__, "in_use": 1})
    _, effects = run_at(store, T0, scheduling_pass, [claims, busy])
    (assign,) = effects.assigns
    assert (assign.agent_id, assign.step_run_id) == ("x-pinned", answer.step_run_id)
    # Set again without the flag, the same selector counts every label once more.
    policy, _ = run_at(store, T0, set_residency, "aws-demo", EU_RULE, "relaxed")
    assert not policy.pinned_labels_only
    run_at(store, T0, submit_steps, new_run(store), [consumer("load#2", target="site=x")])
