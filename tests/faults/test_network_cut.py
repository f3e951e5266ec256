"""The network between one agent and the control plane is cut (blackholed or reset) by a TCP
proxy on loopback while a step runs on that agent.

``cut-agent`` reaches the mutual-TLS agent listener only through the proxy: the control plane
advertises the proxy's address and the agent learns it from its discovery call, which goes to
the client listener directly. The optional second agent (``direct-agent``) must not be cut, but
it would learn the same advertised address; it is pinned to the real agent listener instead
(see ``CutEstate``).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from meridian import models
from tests.faults.invariants import TERMINAL_ATTEMPT_EVENTS, check_history, starts
from tests.faults.tcp_proxy import Mode, TcpProxy
from tests.integration.harness import Estate
from tests.support.deadlines import DEADLINE_S

FLOWS = Path(__file__).resolve().parent / "flows" / "net_flows.py"
HEARTBEAT_S = 0.5
CUT_AGENT = "cut-agent"
DIRECT_AGENT = "direct-agent"


class CutEstate(Estate):
    """An estate whose agents, except the pinned ones, reach the agent listener via a proxy.

    A pinned agent keeps talking to the real agent listener: its identity records that address
    and its ``--control-plane`` is the agent listener itself, where the discovery call (made
    without a client certificate) fails, so the agent falls back to the recorded address and
    never learns the advertised proxy address.
    """

    def __init__(self, root: Path, *, lost_after_s: float) -> None:
        super().__init__(root, lost_after_s=lost_after_s, heartbeat_s=HEARTBEAT_S)
        self.proxy = TcpProxy(self.agent_address).start()
        self.advertise_agent_address = self.proxy.address
        self.pinned: set[str] = set()

    def add_direct_agent(self, name: str, labels: dict[str, str]) -> str:
        self.pinned.add(name)
        return self.add_agent(name, labels, name=name)

    def _spawn(self, name: str, args: Sequence[str]):  # type: ignore[no-untyped-def]
        agent = name.removeprefix("agent-")
        if name.startswith("agent-") and agent in self.pinned:
            args = list(args)
            args[args.index("--control-plane") + 1] = self.agent_address
            identity = self.root / "agents" / agent / "identity.json"
            meta = json.loads(identity.read_text())
            meta["agent_address"] = self.agent_address
            identity.write_text(json.dumps(meta))
        return super()._spawn(name, args)

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            self.proxy.stop()


@pytest.fixture
def make_estate(tmp_path: Path) -> Iterator[type[CutEstate]]:
    made: list[CutEstate] = []

    def make(lost_after_s: float) -> CutEstate:
        estate = CutEstate(tmp_path / "estate", lost_after_s=lost_after_s)
        made.append(estate)
        estate.start()
        estate.add_agent(CUT_AGENT, {"cloud": "aws"}, name=CUT_AGENT)
        return estate

    try:
        yield make  # type: ignore[misc]
    finally:
        for estate in made:
            estate.stop()
            print(estate.logs())  # shown by pytest only when the test failed


# ---- helpers ------------------------------------------------------------------------------


def attempts_of(detail: models.RunDetail, name: str) -> tuple[models.AttemptDetail, ...]:
    (step,) = [s for s in detail.steps if s.name == name]
    return step.attempts


def wait_attempt_running(estate: Estate, run_id: str, name: str, agent: str) -> None:
    def running() -> bool:
        detail = estate.client().get_run(run_id)
        return any(
            a.state == "RUNNING" and a.agent_name == agent
            for s in detail.steps
            if s.name == name
            for a in s.attempts
        )

    estate.wait_until(running, f"{name} to run on {agent}")


def heartbeat_age(estate: Estate, agent: str) -> float:
    with estate.client() as client:
        (info,) = [a for a in client.list_agents() if a.name == agent]
    assert info.last_heartbeat is not None
    return time.time() - info.last_heartbeat.timestamp()


def cut(estate: CutEstate, mode: Mode, seconds: float) -> None:
    """Cut for ``seconds`` and check the control plane really heard nothing meanwhile."""
    estate.proxy.set_mode(mode)
    time.sleep(seconds)
    age = heartbeat_age(estate, CUT_AGENT)
    assert age > seconds - 1.0, f"heartbeats got through the {mode} cut (age {age:.1f}s)"
    estate.proxy.passthrough()


def journal_state(estate: Estate, agent: str) -> tuple[int, int]:
    """(reports still unacked, highest sequence number handed out) of an agent's journal."""
    path = estate.root / "agents" / agent / "journal.sqlite"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=DEADLINE_S) as conn:
        (pending,) = conn.execute("SELECT COUNT(*) FROM reports").fetchone()
        (last,) = conn.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()
    return int(pending), int(last)


def applied_seq(estate: Estate, agent: str) -> int:
    """The control plane's watermark of reports applied from ``agent``."""
    path = estate.server_dir / "meridian.db"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=DEADLINE_S) as conn:
        (seq,) = conn.execute(
            "SELECT last_applied_seq FROM agents WHERE name = ?", (agent,)
        ).fetchone()
    return int(seq)


def wait_journal_delivered(estate: Estate, agent: str) -> int:
    """Wait until every report the agent journaled was applied and acked; returns the count."""

    def delivered() -> bool:
        pending, last = journal_state(estate, agent)
        return pending == 0 and applied_seq(estate, agent) == last

    estate.wait_until(delivered, f"{agent}'s journal to drain")
    return journal_state(estate, agent)[1]


def log_texts(estate: Estate, run_id: str) -> list[str]:
    with estate.client() as client:
        return [line.line.text for line in client.get_logs(run_id).lines]


def assert_no_duplicate_events(detail: models.RunDetail, attempt_id: str) -> None:
    """A report replayed after the cut must not record its event again."""
    kinds = Counter(e.kind for e in detail.events if e.attempt_id == attempt_id)
    repeated = {k: n for k, n in kinds.items() if n > 1}
    assert not repeated, f"events recorded more than once for {attempt_id}: {repeated}"


def process_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")  # exited (a zombie only waits for its parent to reap it)


# ---- a cut shorter than lost_after ----------------------------------------------------------


def wait_reconnected(estate: Estate, agent: str) -> None:
    """Heartbeats arrive again (none can while the cut lasts, not even buffered ones)."""

    def beating() -> bool:
        return heartbeat_age(estate, agent) < 4 * HEARTBEAT_S

    estate.wait_until(beating, f"{agent} to reconnect")


@pytest.mark.parametrize("mode", ["blackhole", "reset"])
def test_cut_shorter_than_lost_after_keeps_the_attempt(
    make_estate, tmp_path: Path, mode: Mode
) -> None:  # type: ignore[no-untyped-def]
    """The step prints before, during and after the cut; it ends only after the reconnect."""
    estate: CutEstate = make_estate(lost_after_s=30.0)  # the step says 30s as well
    work = tmp_path
    runner = estate.run_background(FLOWS, "runs_across_short_cut", f"work={work}")
    run_id = estate.latest_run_id("runs_across_short_cut")
    wait_attempt_running(estate, run_id, "held_open", CUT_AGENT)
    cut(estate, mode, 3.0)  # 6 heartbeat intervals
    wait_reconnected(estate, CUT_AGENT)
    time.sleep(1.0)  # a few more lines on the new stream
    (work / "release").touch()

    # The whole run, outages included: longer than one wait.
    assert runner.wait(timeout=1.5 * DEADLINE_S) == 0, estate.logs()
    detail = estate.client().get_run(run_id)
    assert detail.state == "COMPLETED", detail
    (only,) = attempts_of(detail, "held_open")
    assert only.state == "SUCCEEDED" and only.agent_name == CUT_AGENT
    assert len(starts(work, "held_open")) == 1  # the code ran once
    check_history(detail)
    assert_no_duplicate_events(detail, only.attempt_id)
    assert not [e for e in detail.events if e.kind == "report.rejected"]

    reports = wait_journal_delivered(estate, CUT_AGENT)
    printed = json.loads(detail.result_json)
    texts = [t for t in log_texts(estate, run_id) if t.startswith("held_open line")]
    # Every line the step printed is stored exactly once, in order: none lost, none replayed.
    assert texts == [f"held_open line {i}" for i in range(printed)], texts
    print(
        f"{mode}: 1 attempt, 1 execution, {reports} journaled reports applied once, "
        f"{printed} log lines each stored once, proxy {estate.proxy.stats}"
    )


@pytest.mark.parametrize("mode", ["blackhole", "reset"])
def test_step_finishing_during_a_short_cut_delivers_its_result(
    make_estate, tmp_path: Path, mode: Mode
) -> None:  # type: ignore[no-untyped-def]
    """The 4s step ends while the cut lasts: its last lines and its result wait in the journal
    and must be applied when the cut ends (guarantee 4), not thrown away.

    Regression: the agent used to reconnect without listing this attempt (its runner was
    gone), so the control plane marked it LOST before the replayed result arrived, ignored
    that result and ran the step again."""
    estate: CutEstate = make_estate(lost_after_s=30.0)  # the step says 30s as well
    work, lines = tmp_path, 8
    runner = estate.run_background(
        FLOWS, "survives_short_cut", f"work={work}", "seconds=4", f"lines={lines}"
    )
    run_id = estate.latest_run_id("survives_short_cut")
    wait_attempt_running(estate, run_id, "steady", CUT_AGENT)
    cut(estate, mode, 5.0)  # 10 heartbeat intervals, still far below lost_after

    assert runner.wait(timeout=1.5 * DEADLINE_S) == 0, estate.logs()
    wait_journal_delivered(estate, CUT_AGENT)
    detail = estate.client().get_run(run_id)
    assert detail.state == "COMPLETED", detail
    check_history(detail)
    attempts = attempts_of(detail, "steady")
    assert [(a.state, a.agent_name) for a in attempts] == [("SUCCEEDED", CUT_AGENT)], [
        (a.state, a.error.message if a.error else "") for a in attempts
    ]
    assert len(starts(work, "steady")) == 1, "the step's code ran again"
    assert_no_duplicate_events(detail, attempts[0].attempt_id)
    texts = [t for t in log_texts(estate, run_id) if t.startswith("steady line")]
    assert texts == [f"steady line {i}" for i in range(lines)], texts


# ---- a cut longer than lost_after -----------------------------------------------------------


@pytest.mark.parametrize("mode", ["blackhole", "reset"])
def test_cut_longer_than_lost_after_retries_elsewhere_and_cancels_the_stale_copy(
    make_estate, tmp_path: Path, mode: Mode
) -> None:  # type: ignore[no-untyped-def]
    estate: CutEstate = make_estate(lost_after_s=3.0)  # the step says 3s as well
    work = tmp_path
    runner = estate.run_background(
        FLOWS, "loses_to_long_cut", f"work={work}", "first_s=120", "later_s=1"
    )
    run_id = estate.latest_run_id("loses_to_long_cut")
    wait_attempt_running(estate, run_id, "stale_copy", CUT_AGENT)
    estate.wait_until(lambda: (work / "stale_copy.pid").exists(), "the first copy's pid")
    stale_pid = int((work / "stale_copy.pid").read_text())
    # Only now a second matching agent, so the first attempt surely ran on the cut agent. It
    # also runs `occupy` (one of its 4 slots), so the silent cut agent looks the emptier one:
    # the retry must still avoid it. (Regression: a blackholed agent's stream stayed in the
    # registry, every retry was assigned to it, LOST at the next sweep, and the step failed.)
    estate.add_direct_agent(DIRECT_AGENT, {"cloud": "aws", "role": "direct"})
    wait_attempt_running(estate, run_id, "occupy", DIRECT_AGENT)

    estate.proxy.set_mode(mode)
    try:
        assert runner.wait(timeout=1.5 * DEADLINE_S) == 0, estate.logs()
        assert heartbeat_age(estate, CUT_AGENT) > 3.0  # the cut really lasted past lost_after
        assert not process_gone(stale_pid)  # the stale copy still runs behind the cut
    finally:
        estate.proxy.passthrough()

    detail = estate.client().get_run(run_id)
    assert detail.state == "COMPLETED"
    assert json.loads(detail.result_json) == "retry"
    assert attempts_of(detail, "occupy")[-1].state == "SUCCEEDED"
    first, *rest = attempts_of(detail, "stale_copy")
    assert first.state == "LOST" and first.agent_name == CUT_AGENT
    assert first.error is not None and first.error.error_class == "lost_agent"
    assert rest[-1].state == "SUCCEEDED" and rest[-1].agent_name == DIRECT_AGENT
    # Every attempt after the first went to the agent that was not silent.
    assert [a.agent_name for a in rest] == [DIRECT_AGENT] * len(rest), rest

    # The cut agent comes back, is told its copy is stale, and stops it.
    estate.wait_until(lambda: process_gone(stale_pid), "the stale copy to be stopped", 60)
    wait_journal_delivered(estate, CUT_AGENT)
    after = estate.client().get_run(run_id)
    check_history(after)
    # Its late report (cancelled) did not end the LOST attempt a second time, and no result
    # was recorded for it: exactly one result for the step.
    assert attempts_of(after, "stale_copy") == attempts_of(detail, "stale_copy")
    assert after.result_json == detail.result_json
    completed = [e.step_key for e in after.events if e.kind == "step.completed"]
    assert sorted(completed) == ["occupy#1", "stale_copy#1"], completed
    rejected = [e for e in after.events if e.kind == "report.rejected"]
    late = [
        e
        for e in after.events
        if e.attempt_id == first.attempt_id and e.event_id > max(x.event_id for x in detail.events)
    ]
    assert not [e for e in late if e.kind in TERMINAL_ATTEMPT_EVENTS], late
    # ...but its arrival is on record: the duplicate execution window made visible.
    # The copy's own cancelled outcome arrives a moment after its process is gone.
    estate.wait_until(
        lambda: any(
            e.kind == "report.ignored" and e.attempt_id == first.attempt_id
            for e in estate.client().get_run(run_id).events
        ),
        "the stale copy's late outcome to be recorded",
    )
    print(
        f"{mode}: stale copy pid {stale_pid} stopped; attempts "
        f"{[(a.state, a.agent_name) for a in attempts_of(after, 'stale_copy')]}"
        f"; report.rejected events: {len(rejected)}; events for the lost attempt after the cut: "
        f"{[e.kind for e in late]}"
    )


# ---- on_agent_lost="wait" ----------------------------------------------------------------


def test_wait_policy_keeps_the_attempt_through_a_long_cut(make_estate, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    estate: CutEstate = make_estate(lost_after_s=2.0)  # the step says 2s and "wait"
    work = tmp_path
    runner = estate.run_background(
        FLOWS, "waits_out_long_cut", f"work={work}", "seconds=8", "lines=4"
    )
    run_id = estate.latest_run_id("waits_out_long_cut")
    wait_attempt_running(estate, run_id, "patient", CUT_AGENT)
    estate.proxy.blackhole()
    try:
        time.sleep(5.0)
        assert heartbeat_age(estate, CUT_AGENT) > 4.0
        (attempt,) = attempts_of(estate.client().get_run(run_id), "patient")
        assert attempt.state == "RUNNING"  # not LOST although silent past lost_after
    finally:
        estate.proxy.passthrough()

    assert runner.wait(timeout=1.5 * DEADLINE_S) == 0, estate.logs()
    detail = estate.client().get_run(run_id)
    assert detail.state == "COMPLETED"
    (only,) = attempts_of(detail, "patient")
    assert only.state == "SUCCEEDED" and only.attempt_id == attempt.attempt_id
    assert len(starts(work, "patient")) == 1
    check_history(detail)
    assert_no_duplicate_events(detail, only.attempt_id)
    wait_journal_delivered(estate, CUT_AGENT)
    texts = [t for t in log_texts(estate, run_id) if t.startswith("patient line")]
    assert texts == [f"patient line {i}" for i in range(4)]
    assert os.path.exists(work / "patient.starts")
