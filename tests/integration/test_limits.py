"""Acceptance of named concurrency limits with real processes: a control plane, two agents and
a flow runner. A global limit of 2 over six ~1.5 s steps never has 3 holders nor 3 live
attempts — including when the agent running a holder is SIGKILLed, after which its slot comes
back (the attempt is LOST and retried) and the run completes; a waiting step says which
limit it waits for; a flow naming a limit that does not exist is refused at submission."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import Estate
from tests.support.deadlines import DEADLINE_S

FLOWS = Path(__file__).parent / "flows" / "limit_flows.py"
LIVE = {"ASSIGNED", "RUNNING"}


@pytest.fixture
def estate(tmp_path: Path) -> Iterator[Estate]:
    with Estate(tmp_path / "estate", heartbeat_s=0.5, lost_after_s=4) as e:
        e.add_agent("dc1", {"site": "dc1"}, capacity=4, name="first")
        e.add_agent("dc1", {"site": "dc1"}, capacity=4, name="second")
        yield e


class Sampler(threading.Thread):
    """Reads the limit's holders and the run's live attempts over and over until stopped."""

    def __init__(self, estate: Estate, run_id: str) -> None:
        super().__init__(daemon=True)
        self.estate, self.run_id = estate, run_id
        self.holders: list[int] = []
        self.live: list[int] = []
        self.live_on: dict[str, str] = {}  # attempt id -> agent name, of the last sample
        self.done = threading.Event()

    def run(self) -> None:
        with self.estate.client() as client:
            while not self.done.is_set():
                (warehouse,) = [x for x in client.list_limits() if x.name == "warehouse"]
                self.holders.append(len(warehouse.holders))
                attempts = [a for s in client.get_run(self.run_id).steps for a in s.attempts]
                live = {a.attempt_id: a.agent_name for a in attempts if a.state in LIVE}
                self.live.append(len(live))
                self.live_on = live
                self.done.wait(0.05)


def test_a_step_naming_a_missing_limit_is_refused(estate: Estate) -> None:
    result = estate.cli("run", f"{FLOWS}:limited", "-p", "n=1", "-p", "seconds=0")
    assert result.returncode != 0
    assert "concurrency limit 'warehouse', which does not exist" in result.stdout + result.stderr


def test_a_limit_of_two_never_has_three_holders_even_when_a_holders_agent_dies(
    estate: Estate,
) -> None:
    estate.cli("limits", "set", "warehouse", "2", check=True)
    runner = estate.run_background(FLOWS, "limited", "n=6", "seconds=1.5")
    run_id = estate.latest_run_id("limited")
    sampler = Sampler(estate, run_id)
    sampler.start()
    try:
        estate.wait_until(lambda: len(sampler.live_on) == 2, "two steps holding the limit")
        victim = next(iter(sampler.live_on.values()))
        estate.kill_agent(victim)
        assert runner.wait(timeout=4 * DEADLINE_S) == 0, estate.logs()
    finally:
        sampler.done.set()
        sampler.join(timeout=DEADLINE_S)
    detail = estate.client().get_run(run_id)
    assert detail.state == "COMPLETED"
    assert max(sampler.holders) == 2 and max(sampler.live) == 2, (
        sampler.holders,
        sampler.live,
    )
    # The killed agent's attempt was lost and ran again elsewhere; its slot came back.
    attempts = [a for s in detail.steps for a in s.attempts]
    lost = [a for a in attempts if a.state == "LOST"]
    assert lost and all(a.agent_name == victim for a in lost)
    assert sum(a.state == "SUCCEEDED" for a in attempts) == 6
    (warehouse,) = estate.client().list_limits()
    assert warehouse.holders == () and warehouse.waiting == 0
    listing = estate.cli("limits", "list", check=True).stdout
    assert "warehouse" in listing and "LIMIT" in listing
    refused = estate.cli("limits", "set", "Bad Name", "1")
    assert refused.returncode != 0 and "lower-case letters" in refused.stderr + refused.stdout
    waiting = [e.message for e in detail.events if e.kind == "attempt.waiting"]
    assert any("waiting for concurrency limit 'warehouse' (2/2 held;" in m for m in waiting)
