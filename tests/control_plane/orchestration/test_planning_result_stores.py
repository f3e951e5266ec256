"""Steps that name a result store (``@step(result_store=...)``), with plain values: matching and
the plan give them only to agents that advertised the store, a waiting attempt says which
store it waits for, and a submission no connected matching agent could keep is refused."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import Counter

from control_plane.orchestration.matching import AgentSlot, choose_agent, store_refusal
from control_plane.orchestration.planning import ReadyAttempt, plan
from control_plane.orchestration.ready import ReadyEntry, ReadyQueue
from control_plane.orchestration.waiting import KnownAgent, WaitReason, classify_wait
from meridian.core.selectors import parse_selector

ONPREM = parse_selector("environment=onprem")


def slot(agent_id: str, *stores: str, capacity: int = 4, in_use: int = 0) -> AgentSlot:
    """An agent of environment ``onprem`` with the result stores ``stores``."""
    return AgentSlot(
        agent_id=agent_id,
        name=f"host-{agent_id}",
        environment="onprem",
        labels={"site": "dc1"},
        providers=frozenset({"process"}),
        capacity=capacity,
        in_use=in_use,
        result_stores=frozenset(stores),
    )


WITH = slot("with", "spoof-fs", "onprem-fs")
WITHOUT = slot("without", "onprem-fs")


def ready(attempt_id: str, result_store: str = "") -> ReadyAttempt:
    return ReadyAttempt(attempt_id, ONPREM, "process", result_store=result_store)


def test_only_an_agent_with_the_named_store_is_chosen() -> None:
    for tiebreak in range(4):
        chosen = choose_agent(
            ONPREM, "process", [WITHOUT, WITH], tiebreak=tiebreak, result_store="spoof-fs"
        )
        assert chosen is WITH
    assert choose_agent(ONPREM, "process", [WITHOUT], result_store="spoof-fs") is None


def test_a_step_naming_no_store_goes_to_any_agent() -> None:
    picks = [choose_agent(ONPREM, "process", [WITHOUT, WITH], tiebreak=t) for t in range(2)]
    assert {p.agent_id for p in picks if p is not None} == {"with", "without"}


def test_a_map_naming_a_store_fills_only_the_agents_that_have_it() -> None:
    """QA's case: 6 calls, two agents, one with the store: every call goes to that one, as
    far as it has room, and the rest wait (never to the agent without the store)."""
    assignments = plan([ready(f"t{i}", "spoof-fs") for i in range(6)], [WITHOUT, WITH])
    assert Counter(a.agent_id for a in assignments) == {"with": 4}


def test_a_store_no_agent_has_leaves_other_work_planned() -> None:
    attempts = [ready("t0", "nope"), ready("t1", "nope"), ready("t2"), ready("t3", "onprem-fs")]
    assignments = plan(attempts, [WITHOUT, WITH])
    assert sorted(a.attempt_id for a in assignments) == ["t2", "t3"]


def known(s: AgentSlot, status: str = "connected") -> KnownAgent:
    return KnownAgent(s.agent_id, s.name, s.environment, s.labels, s.providers, status)


def test_an_attempt_waiting_for_a_store_names_it_and_the_stores_agents_have() -> None:
    why = classify_wait(ONPREM, "process", [WITHOUT], [known(WITHOUT)], result_store="spoof-fs")
    assert why.reason is WaitReason.RESULT_STORE
    assert "'spoof-fs'" in why.message
    assert "host-without" in why.message and "their stores: onprem-fs" in why.message
    bare = classify_wait(ONPREM, "process", [slot("x")], [], result_store="spoof-fs")
    assert "their stores: none" in bare.message


def test_an_agent_with_the_store_that_is_full_means_waiting_for_a_slot() -> None:
    full = dataclasses.replace(WITH, in_use=WITH.capacity)
    connected = [WITHOUT, full]
    why = classify_wait(ONPREM, "process", connected, [], result_store="spoof-fs")
    assert why.reason is WaitReason.FULL and "host-with " in why.message
    assert "host-without" not in why.message


def test_without_a_connected_matching_agent_the_usual_reasons_apply() -> None:
    """Stores are known only for connected agents: a disconnected one may have the store."""
    offline = known(WITH, status="disconnected")
    why = classify_wait(ONPREM, "process", [], [offline], result_store="spoof-fs")
    assert why.reason is WaitReason.DISCONNECTED


def test_steps_naming_no_store_wait_as_before() -> None:
    full = dataclasses.replace(WITHOUT, in_use=WITHOUT.capacity)
    assert classify_wait(ONPREM, "process", [full], []).reason is WaitReason.FULL


def test_a_submission_is_refused_only_when_matching_agents_lack_the_store() -> None:
    message = store_refusal("load#1", "spoof-fs", [WITHOUT, slot("bare")])
    assert message is not None
    for needle in ("'load#1'", "'spoof-fs'", "host-without", "host-bare", "onprem-fs"):
        assert needle in message
    assert store_refusal("load#1", "spoof-fs", [WITHOUT, WITH]) is None
    assert store_refusal("load#1", "spoof-fs", []) is None  # nothing matches yet: it waits
    assert store_refusal("load#1", "", [WITHOUT]) is None


def test_waiting_groups_keep_steps_with_and_without_a_store_apart() -> None:
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

    def entry(n: int, result_store: str) -> ReadyEntry:
        return ReadyEntry(
            f"a{n}", "r1", f"s{n}", "environment=onprem", "process", t0, t0, None,
            result_store=result_store,
        )  # fmt: skip

    queue = ReadyQueue([entry(1, ""), entry(2, "spoof-fs"), entry(3, "spoof-fs")])
    groups = {key: size for key, _, size in queue.groups(t0)}
    assert groups == {
        ("r1", "environment=onprem", "process", "", ""): 1,
        ("r1", "environment=onprem", "process", "", "spoof-fs"): 2,
    }
