from __future__ import annotations

from collections import Counter

from control_plane.orchestration.matching import (
    AgentSlot,
    choose_agent,
    effective_labels,
    explain_no_match,
    has_potential_match,
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
) -> AgentSlot:
    return AgentSlot(
        agent_id=agent_id,
        name=f"host-{agent_id}",
        environment=environment,
        labels=labels if labels is not None else {"cloud": "aws", "region": "us-east-1"},
        providers=frozenset(providers),
        capacity=capacity,
        in_use=in_use,
        draining=draining,
    )


AWS = slot("a1")
ONPREM = slot("o1", "onprem-demo", labels={"site": "dc1"}, providers=("process", "slurm"))


def test_effective_labels_include_the_environment_and_it_cannot_be_spoofed() -> None:
    spoof = slot("x", "dev", labels={"environment": "prod", "cloud": "aws"})
    assert effective_labels(spoof) == {"environment": "dev", "cloud": "aws"}
    assert choose_agent(parse_selector("environment=prod"), "process", [spoof]) is None
    assert choose_agent(parse_selector("environment=dev"), "process", [spoof]) == spoof


def test_selector_and_provider_must_both_match() -> None:
    agents = [AWS, ONPREM]
    assert choose_agent(parse_selector("cloud=aws"), "process", agents) == AWS
    assert choose_agent(parse_selector("site=dc1"), "slurm", agents) == ONPREM
    assert choose_agent(parse_selector("cloud=aws"), "slurm", agents) is None
    assert choose_agent(parse_selector("cloud=azure"), "process", agents) is None
    assert choose_agent(parse_selector(""), "slurm", agents) == ONPREM


def test_draining_and_full_agents_are_skipped() -> None:
    full = slot("full", in_use=4)
    draining = slot("drain", draining=True)
    zero = slot("zero", capacity=0)
    selector = parse_selector("cloud=aws")
    assert choose_agent(selector, "process", [full, draining, zero]) is None
    assert has_potential_match(selector, "process", [full, draining, zero])
    assert not has_potential_match(parse_selector("cloud=gcp"), "process", [full, draining])


def test_least_loaded_ratio_wins_then_fewest_in_use() -> None:
    busy_big = slot("big", capacity=10, in_use=5)  # 50 %
    idle_small = slot("small", capacity=2, in_use=0)  # 0 %
    assert choose_agent(parse_selector(""), "process", [busy_big, idle_small]) == idle_small
    half_big = slot("b", capacity=8, in_use=4)
    half_small = slot("s", capacity=2, in_use=1)
    assert choose_agent(parse_selector(""), "process", [half_big, half_small]) == half_small


def test_ties_rotate_with_the_tiebreak() -> None:
    agents = [slot("c"), slot("a"), slot("b")]
    picks = [choose_agent(parse_selector(""), "process", agents, tiebreak=i) for i in range(6)]
    assert [p.agent_id for p in picks if p] == ["a", "b", "c", "a", "b", "c"]


def test_repeated_assignment_spreads_load_evenly() -> None:
    agents = [slot("a", capacity=3), slot("b", capacity=3), slot("c", capacity=6)]
    counts: Counter[str] = Counter()
    for i in range(12):
        chosen = choose_agent(parse_selector(""), "process", agents, tiebreak=i)
        assert chosen is not None
        counts[chosen.agent_id] += 1
        agents = [
            AgentSlot(**{**s.__dict__, "in_use": s.in_use + 1}) if s is chosen else s
            for s in agents
        ]
    assert counts == {"a": 3, "b": 3, "c": 6}
    assert choose_agent(parse_selector(""), "process", agents) is None


def test_explanation_lists_known_environments() -> None:
    known = {"aws-demo": {"cloud": "aws", "region": "us-east-1"}, "onprem-demo": {"site": "dc1"}}
    message = explain_no_match(parse_selector("cloud=azure"), "process", [AWS], known)
    assert message == (
        'no connected agent matches target "cloud=azure" with provider "process"; known '
        "environments: aws-demo {cloud=aws, region=us-east-1} (connected, providers: process), "
        "onprem-demo {site=dc1} (disconnected)"
    )


def test_explanation_says_when_only_the_provider_is_missing() -> None:
    message = explain_no_match(parse_selector("cloud=aws"), "aws-ecs", [AWS], {})
    assert "(agents matching the target offer only: process)" in message
    assert "aws-demo {cloud=aws, region=us-east-1} (connected, providers: process)" in message


def test_explanation_says_when_matching_agents_are_busy() -> None:
    message = explain_no_match(parse_selector(""), "process", [slot("d", draining=True)], {})
    assert message.startswith('no connected agent offers provider "process" (matching agents')
    assert "(connected draining, providers: process)" in message


def test_explanation_without_any_agents() -> None:
    message = explain_no_match(parse_selector("cloud=aws"), "process", [], {})
    assert "no agents are enrolled yet" in message


def test_explanation_stays_bounded() -> None:
    known = {f"env-{i:03d}": {f"label{j}": "v" * 63 for j in range(20)} for i in range(500)}
    message = explain_no_match(parse_selector("cloud=azure"), "process", [], known)
    assert "and 490 more" in message
    assert len(message) < 10_000
