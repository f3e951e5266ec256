"""Why a queued attempt waits: the classification the scheduler records as attempt.waiting."""

from __future__ import annotations

from control_plane.orchestration.matching import AgentSlot
from control_plane.orchestration.waiting import (
    MAX_WAIT_MESSAGE,
    KnownAgent,
    Waiting,
    WaitReason,
    classify_wait,
    typo_hint,
)
from meridian.core.selectors import parse_selector


def slot(
    agent_id: str,
    environment: str = "aws-demo",
    *,
    labels: dict[str, str] | None = None,
    providers: tuple[str, ...] = ("process",),
    capacity: int = 4,
    in_use: int = 0,
    draining: bool = False,
    degraded: bool = False,
) -> AgentSlot:
    return AgentSlot(
        agent_id=agent_id,
        name=f"host-{agent_id}",
        environment=environment,
        labels=labels if labels is not None else {"cloud": "aws"},
        providers=frozenset(providers),
        capacity=capacity,
        in_use=in_use,
        draining=draining,
        degraded=degraded,
    )


def known(s: AgentSlot, status: str = "connected") -> KnownAgent:
    return KnownAgent(s.agent_id, s.name, s.environment, s.labels, s.providers, status)


def classify(
    target: str, provider: str, connected: list[AgentSlot], stored: list[KnownAgent]
) -> Waiting:
    return classify_wait(parse_selector(target), provider, connected, stored)


AWS = slot("a1")
GCP = slot("g1", "gcp-demo", labels={"cloud": "gcp"})


def test_a_value_that_differs_in_case_is_no_match_with_a_did_you_mean() -> None:
    why = classify("cloud=AWS", "process", [AWS, GCP], [known(AWS), known(GCP)])
    assert why.reason is WaitReason.NO_MATCH
    assert "did you mean cloud=aws?" in why.message
    assert "aws-demo" in why.message and "gcp-demo" in why.message  # nearest environments


def test_a_key_that_differs_in_case_gets_a_hint_too() -> None:
    assert "did you mean cloud=aws?" in typo_hint(parse_selector("Cloud=aws"), [AWS])
    assert typo_hint(parse_selector("cloud=azure"), [AWS]) == ""


def test_a_provider_no_agent_offers_is_named() -> None:
    why = classify("cloud=aws", "slurm", [AWS], [known(AWS)])
    assert why.reason is WaitReason.NO_PROVIDER
    assert '"slurm"' in why.message and "process" in why.message


def test_full_draining_and_degraded_agents() -> None:
    full = slot("a1", in_use=4)
    why = classify("cloud=aws", "process", [full], [known(full)])
    assert why.reason is WaitReason.FULL and "4/4" in why.message
    draining = slot("a1", draining=True)
    why = classify("cloud=aws", "process", [draining], [known(draining)])
    assert why.reason is WaitReason.DRAINING and "host-a1" in why.message
    sick = slot("a1", degraded=True)
    assert classify("cloud=aws", "process", [sick], [known(sick)]).reason is WaitReason.DEGRADED
    # One usable but busy agent next to a draining one: waiting for a slot.
    both = [slot("a1", in_use=4), slot("a2", draining=True)]
    assert classify("cloud=aws", "process", both, []).reason is WaitReason.FULL


def test_a_matching_agent_that_is_not_connected() -> None:
    why = classify("cloud=aws", "process", [GCP], [known(AWS, "lost"), known(GCP)])
    assert why.reason is WaitReason.DISCONNECTED
    assert "host-a1" in why.message and "lost" in why.message
    # Stored as connected but missing from the slots: its stream went silent.
    silent = classify("cloud=aws", "process", [], [known(AWS, "connected")])
    assert silent.reason is WaitReason.DISCONNECTED and "silent" in silent.message


def test_no_agents_at_all() -> None:
    why = classify("cloud=aws", "process", [], [])
    assert why.reason is WaitReason.NO_AGENTS
    assert "meridian agent enroll" in why.message


def test_the_message_is_bounded() -> None:
    many = [slot(f"a{i}", f"env-{i}-" + "x" * 50, labels={"k" * 50: "v" * 60}) for i in range(50)]
    why = classify("cloud=" + "z" * 63, "process", many, [known(s) for s in many])
    assert why.reason is WaitReason.NO_MATCH
    assert len(why.message) <= MAX_WAIT_MESSAGE
