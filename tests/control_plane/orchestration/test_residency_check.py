"""Data residency when steps are planned and explained: pure checks with plain values.

A step whose inputs were produced in an environment with a residency rule goes only to an
agent of that environment or one whose labels (with its environment) match the rule; when
agents match its target but none may read its inputs, its waiting reason names the rule."""

from __future__ import annotations

from control_plane.orchestration.matching import AgentSlot, choose_agent
from control_plane.orchestration.planning import ReadyAttempt, plan
from control_plane.orchestration.residency_check import (
    Reader,
    allows,
    describe,
    refusal,
    residency_of,
)
from control_plane.orchestration.waiting import KnownAgent, WaitReason, classify_wait
from meridian.core.residency import parse_rule
from meridian.core.selectors import parse_selector

EU = parse_rule("aws-eu", "region in (eu-west-1,europe-west1)")
ONPREM = parse_rule("dc1", "site=dc1")
assert EU is not None and ONPREM is not None
RULES = {"aws-eu": EU, "dc1": ONPREM}
ANY = parse_selector("")


def slot(agent_id: str, environment: str, labels: dict[str, str], in_use: int = 0) -> AgentSlot:
    return AgentSlot(agent_id, agent_id, environment, labels, frozenset({"process"}), 2, in_use)


def test_residency_is_the_rules_of_the_producing_environments_that_have_one() -> None:
    assert residency_of(["gcp", "aws-eu", "aws-eu"], RULES) == (EU,)
    assert residency_of(["dc1", "aws-eu"], RULES) == (EU, ONPREM)  # sorted, hashable
    assert residency_of(["gcp"], RULES) == ()
    assert describe((EU, ONPREM)) == "aws-eu: region in (eu-west-1,europe-west1); dc1: site=dc1"


def test_an_agent_may_read_in_the_producing_environment_or_where_the_rule_matches() -> None:
    assert allows((EU,), "aws-eu", {})  # the bytes do not move
    assert allows((EU,), "gcp-eu", {"region": "europe-west1"})
    assert not allows((EU,), "aws-us", {"region": "us-east-1"})
    # Every rule must hold: the eu reader is not on site dc1.
    assert not allows((EU, ONPREM), "gcp-eu", {"region": "europe-west1"})
    assert allows((), "anywhere", {})


def test_a_rule_naming_environments_cannot_be_fooled_by_an_environment_label() -> None:
    rule = parse_rule("aws-eu", "environment in (gcp-eu)")
    assert rule is not None
    assert not allows((rule,), "aws-us", {"environment": "gcp-eu"})
    assert allows((rule,), "gcp-eu", {})


def test_choose_agent_skips_agents_that_may_not_read_even_when_they_are_freer() -> None:
    free_us = slot("us", "aws-us", {"region": "us-east-1"})
    busy_eu = slot("eu", "gcp-eu", {"region": "europe-west1"}, in_use=1)
    assert choose_agent(ANY, "process", [free_us, busy_eu]) == free_us
    assert choose_agent(ANY, "process", [free_us, busy_eu], residency=(EU,)) == busy_eu
    assert choose_agent(ANY, "process", [free_us], residency=(EU,)) is None


def test_plan_gives_constrained_attempts_only_allowed_agents_and_others_the_rest() -> None:
    us = slot("us", "aws-us", {"region": "us-east-1"})
    eu = slot("eu", "gcp-eu", {"region": "europe-west1"})
    ready = [
        ReadyAttempt("r1", ANY, "process", (EU,)),
        ReadyAttempt("r2", ANY, "process", (EU,)),
        ReadyAttempt("r3", ANY, "process", (EU,)),  # eu is full by now: it waits
        ReadyAttempt("plain", ANY, "process"),
    ]
    assigned = {a.attempt_id: a.agent_id for a in plan(ready, [us, eu])}
    assert assigned == {"r1": "eu", "r2": "eu", "plain": "us"}


def test_a_waiting_reason_names_the_rule_when_matching_agents_may_not_read() -> None:
    us = slot("us", "aws-us", {"region": "us-east-1"})
    known = [KnownAgent("us", "us", "aws-us", {"region": "us-east-1"}, frozenset({"process"}))]
    why = classify_wait(ANY, "process", [us], known, (EU,))
    assert why.reason == WaitReason.RESIDENCY
    assert why.message.startswith(
        "waiting for an agent allowed to read results of environment 'aws-eu' under residency "
        "rule 'region in (eu-west-1,europe-west1)'"
    )
    assert "aws-us" in why.message
    # Without the rule the same attempt is simply waiting for the only agent's free slot.
    full = slot("us", "aws-us", {"region": "us-east-1"}, in_use=2)
    assert classify_wait(ANY, "process", [full], known).reason == WaitReason.FULL


def test_an_allowed_agent_that_is_busy_or_offline_is_what_the_reason_names() -> None:
    us = slot("us", "aws-us", {"region": "us-east-1"})
    eu_full = slot("eu", "gcp-eu", {"region": "europe-west1"}, in_use=2)
    why = classify_wait(ANY, "process", [us, eu_full], [], (EU,))
    assert why.reason == WaitReason.FULL and "eu 2/2" in why.message and "us " not in why.message
    offline = KnownAgent("eu", "eu", "gcp-eu", {"region": "europe-west1"}, frozenset({"process"}))
    why = classify_wait(ANY, "process", [us], [offline], (EU,))
    assert why.reason == WaitReason.DISCONNECTED and "eu" in why.message


def test_submission_is_refused_only_when_candidates_exist_and_none_may_read() -> None:
    us = Reader("aws-us", {"region": "us-east-1"})
    eu = Reader("gcp-eu", {"region": "europe-west1"})
    assert refusal((EU,), "load#1", []) is None  # nothing matches yet: the scheduler decides
    assert refusal((EU,), "load#1", [us, eu]) is None
    assert refusal((), "load#1", [us]) is None
    decision = refusal((EU,), "load#1", [us])
    assert decision is not None and not decision.allowed
    for needle in ("'load#1'", "'aws-eu'", "region in (eu-west-1,europe-west1)", "'aws-us'"):
        assert needle in decision.message


def test_a_pinned_labels_only_rule_plans_and_refuses_by_pinned_labels() -> None:
    strict = parse_rule("aws-eu", "region in (eu-west-1,europe-west1)", pinned_labels_only=True)
    assert strict is not None
    claims = slot("claims", "gcp-eu", {"region": "europe-west1"})
    pinned = AgentSlot(
        "pinned", "pinned", "gcp-eu2", {"region": "europe-west1"}, frozenset({"process"}), 2, 0,
        pinned_labels={"region": "europe-west1"},
    )  # fmt: skip
    assert not allows((strict,), claims.environment, claims.labels, claims.pinned_labels)
    assert allows((strict,), pinned.environment, pinned.labels, pinned.pinned_labels)
    # The freer agent only claims the label: the attempt goes to the one whose token pinned it.
    busy_pinned = AgentSlot(**{**pinned.__dict__, "in_use": 1})
    chosen = choose_agent(ANY, "process", [claims, busy_pinned], residency=(strict,))
    assert chosen == busy_pinned
    # At submission, a reader that only claims the label is named in the refusal.
    refused = refusal((strict,), "load#1", [Reader("gcp-eu", {"region": "europe-west1"})])
    assert refused is not None and "pinned labels only" in refused.message
    allowed = Reader("gcp-eu", {"region": "europe-west1"}, {"region": "europe-west1"})
    assert refusal((strict,), "load#1", [allowed]) is None
    assert describe((strict,)) == "aws-eu: region in (eu-west-1,europe-west1) (pinned labels only)"
