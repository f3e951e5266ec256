"""The real Agent against a fake control plane over loopback mTLS (agent.proto semantics)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent import Agent, AgentConfig, enroll
from agent.journal import Journal
from agent.runner import Runner
from meridian.core.kinds import ASSIGNMENT_REFUSED
from protos.meridian.v1 import agent_pb2
from tests.agent.fakecp import JOIN_TOKEN, FakeControlPlane, FakeProvider, Session
from tests.support.deadlines import DEADLINE_S
from tests.support.polling import apoll_until
from tests.support.tls import TestPKI


@dataclass
class Harness:
    cp: FakeControlPlane
    agent: Agent
    provider: FakeProvider
    config: AgentConfig
    run_task: asyncio.Task[None]


def run_async(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), DEADLINE_S))


async def start_cp(tmp_path: Path) -> FakeControlPlane:
    cp = FakeControlPlane(TestPKI())
    await cp.start()
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(cp.pki.ca_pem)
    await asyncio.to_thread(enroll, cp.enroll_address, ca_file, JOIN_TOKEN, tmp_path / "agent")
    return cp


@asynccontextmanager
async def running_agent(
    tmp_path: Path,
    *,
    cp: FakeControlPlane | None = None,
    provider: FakeProvider | None = None,
    capacity: int = 2,
) -> AsyncIterator[Harness]:
    cp = cp or await start_cp(tmp_path)
    provider = provider or FakeProvider()
    config = AgentConfig(
        control_plane=cp.address,
        data_dir=tmp_path / "agent",
        labels={"cloud": "test", "region": "here"},
        providers=("fake",),
        capacity=capacity,
        drain_grace_s=2.0,
        reconnect_max_backoff_s=0.3,
    )
    agent = Agent(config, provider_loader=lambda _type, _cfg: provider)
    run_task = asyncio.ensure_future(agent.run())
    try:
        yield Harness(cp, agent, provider, config, run_task)
    finally:
        if cp.latest is not None:
            cp.latest.ack_everything()  # so shutdown's flush need not wait for acks
        await agent.shutdown(grace=0.5)
        if not run_task.cancelled():  # a test may kill the agent on purpose
            await run_task
        await cp.stop()


async def connect(h: Harness, **welcome: Any) -> Session:
    session = await h.cp.next_session()
    session.welcome(**welcome)
    return session


def kinds(reports: list[Any], attempt_id: str) -> list[str]:
    return [r.WhichOneof("body") for r in reports if r.attempt_id == attempt_id]


def test_hello_then_assign_accept_runs_to_finished(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_agent(tmp_path) as h:
            s = await h.cp.next_session()
            hello = s.hello
            assert dict(hello.labels) == {"cloud": "test", "region": "here"}
            assert [p.type for p in hello.providers] == ["fake"]
            assert json.loads(hello.providers[0].config_schema_json) == FakeProvider.options_schema
            assert hello.capacity == 2 and hello.hostname and hello.version
            assert not hello.held_attempts and not hello.draining
            assert s.peer_cn == "agent-1"  # the enrolled certificate is presented
            s.welcome()
            s.assign("a1", 7, run_for=0.05, lines=3)
            running = await s.next_report()
            assert (running.attempt_id, running.fencing_token) == ("a1", 7)
            assert running.WhichOneof("body") == "running"
            assert h.provider.submitted == []  # nothing starts before ACCEPT
            s.decide("a1", 7)
            reports = [running, *await s.reports_until_finished("a1")]
            body = kinds(reports, "a1")
            assert body[:2] == ["running", "handle"] and body[-1] == "finished"
            assert reports[1].handle.resource_id == "fake-a1"
            lines = [
                ln.text for r in reports if r.WhichOneof("body") == "logs" for ln in r.logs.lines
            ]
            assert lines == ["line 0", "line 1", "line 2"]
            finished = reports[-1].finished
            assert finished.outcome == agent_pb2.ATTEMPT_OUTCOME_SUCCEEDED
            assert json.loads(finished.result_json) == {"ok": True}
            seqs = [r.seq for r in reports]
            assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) and seqs[0] >= 1
            assert all(r.fencing_token == 7 for r in reports)
            assert h.agent.connected

    run_async(scenario)


def test_reject_starts_nothing(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_agent(tmp_path) as h:
            s = await connect(h)
            s.assign("a1", 1, run_for=0.01)
            assert (await s.next_report()).WhichOneof("body") == "running"
            s.decide("a1", 1, accept=False)
            s.assign("a2", 2, run_for=0.01)
            assert (await s.next_report()).attempt_id == "a2"
            s.decide("a2", 2)
            reports = await s.reports_until_finished("a2")
            assert kinds(reports, "a1") == []
            assert h.provider.submitted == ["a2"]

    run_async(scenario)


def test_ack_deletes_journal_entries(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_agent(tmp_path) as h:
            s = await connect(h)
            s.assign("a1", 1, lines=2)
            await s.next_report()
            s.decide("a1", 1)
            reports = await s.reports_until_finished("a1")
            journal = Journal(h.config.data_dir)
            try:
                assert journal.count() == len(reports) + 1
                s.ack(reports[-1].seq)
                await apoll_until(
                    lambda: journal.count() == 0, message="the acked journal to be emptied"
                )
            finally:
                journal.close()

    run_async(scenario)


def test_reports_replayed_with_same_seq_after_dropped_stream(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_agent(tmp_path) as h:
            s1 = await connect(h)
            s1.assign("a1", 7, run_for=1.0, lines=1)
            running = await s1.next_report()
            s1.decide("a1", 7)
            handle = await s1.next_report()
            assert handle.WhichOneof("body") == "handle"
            s1.drop()
            # The step keeps running while the agent reconnects; Hello says it is still held.
            s2 = await h.cp.next_session()
            assert [(a.attempt_id, a.fencing_token) for a in s2.hello.held_attempts] == [("a1", 7)]
            # The control plane applied `running` but its Ack was lost.
            s2.welcome(last_applied_seq=running.seq)
            replayed = await s2.reports_until_finished("a1")
            assert replayed[0].seq == handle.seq
            assert replayed[0].SerializeToString() == handle.SerializeToString()
            assert all(r.seq > running.seq for r in replayed)
            assert replayed[-1].finished.outcome == agent_pb2.ATTEMPT_OUTCOME_SUCCEEDED

    run_async(scenario)


def test_cancel_reaches_provider_or_prevents_start(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_agent(tmp_path) as h:
            s = await connect(h)
            s.assign("a1", 1, run_for=30)
            await s.next_report()
            s.decide("a1", 1)
            assert (await s.next_report()).WhichOneof("body") == "handle"
            s.cancel("a1", 1, reason="user asked")
            finished = (await s.reports_until_finished("a1"))[-1].finished
            assert finished.outcome == agent_pb2.ATTEMPT_OUTCOME_CANCELLED
            assert finished.error.error_class == "cancelled"
            assert finished.error.message == "user asked"
            assert h.provider.cancelled == ["a1"]
            # Cancelled while waiting for the decision: reported, never started.
            s.assign("a2", 2)
            await s.next_report()
            s.cancel("a2", 2)
            reports = await s.reports_until_finished("a2")
            assert kinds(reports, "a2") == ["finished"]
            assert "a2" not in h.provider.submitted

    run_async(scenario)


def test_refusals_and_start_failures(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_agent(tmp_path, capacity=1) as h:
            s = await connect(h)
            s.assign("a1", 1, run_for=30)
            await s.next_report()
            s.assign("a2", 2)
            refused = await s.next_report()
            assert refused.attempt_id == "a2"
            assert refused.finished.error.error_class == "infrastructure"
            assert refused.finished.error.message == "agent at capacity"
            # Named as a refusal: the control plane queues it again instead of failing it.
            assert refused.finished.error.type == ASSIGNMENT_REFUSED
            s.decide("a1", 1, accept=False)
            s.assign("a3", 3, bogus=1)
            await s.next_report()
            s.decide("a3", 3)
            bad_options = (await s.next_report()).finished
            assert bad_options.error.error_class == "permanent"
            assert "bogus" in bad_options.error.message
            s.assign("a4", 4, start_error="no capacity in region")
            await s.next_report()
            s.decide("a4", 4)
            failed = (await s.next_report()).finished
            assert failed.error.error_class == "infrastructure"
            assert "no capacity in region" in failed.error.message

    run_async(scenario)


def test_a_slot_frees_once_the_final_report_is_journaled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control plane frees a slot when the finished report arrives and may assign the
    next attempt at once: the runner's clean-up after its report must not refuse it."""
    cleaning_up = asyncio.Event()
    clean_up_may_end = asyncio.Event()

    async def slow_clean_up(runner: Runner) -> None:
        cleaning_up.set()
        await clean_up_may_end.wait()

    monkeypatch.setattr(Runner, "_discard_files", slow_clean_up)

    async def scenario() -> None:
        async with running_agent(tmp_path, capacity=1) as h:
            s = await connect(h)
            s.assign("a1", 1)
            await s.next_report()
            s.decide("a1", 1)
            await s.reports_until_finished("a1")
            await asyncio.wait_for(cleaning_up.wait(), DEADLINE_S)
            s.assign("a2", 2)
            report = await s.next_report()
            assert report.attempt_id == "a2"
            assert report.WhichOneof("body") != "finished", report.finished.error.message
            clean_up_may_end.set()

    run_async(scenario)


def test_shutdown_drains(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_agent(tmp_path) as h:
            h.cp.auto_ack = True
            s = await connect(h)
            for attempt, run_for in (("quick", 0.3), ("slow", 30.0)):
                s.assign(attempt, 1, run_for=run_for)
                await s.next_report()
                s.decide(attempt, 1)
                assert (await s.next_report()).WhichOneof("body") == "handle"
            shutdown = asyncio.ensure_future(h.agent.shutdown(grace=1.0))
            while not (await s.next_heartbeat()).draining:
                pass
            s.assign("late", 9)
            outcomes: dict[str, Any] = {}
            while len(outcomes) < 3:
                report = await s.next_report()
                if report.WhichOneof("body") == "finished":
                    outcomes[report.attempt_id] = report.finished
            assert outcomes["quick"].outcome == agent_pb2.ATTEMPT_OUTCOME_SUCCEEDED
            assert outcomes["slow"].outcome == agent_pb2.ATTEMPT_OUTCOME_CANCELLED
            assert outcomes["late"].error.message == "agent is draining"
            assert h.provider.cancelled == ["slow"]
            await shutdown
            assert h.run_task.done() and h.provider.closed
            assert not h.agent.connected
            await h.agent.shutdown()  # idempotent

    run_async(scenario)


@pytest.mark.parametrize("reattach", [True, False])
def test_restart_recovers_or_reports_lost(tmp_path: Path, reattach: bool) -> None:
    async def scenario() -> None:
        cp = await start_cp(tmp_path)
        provider = FakeProvider()
        async with running_agent(tmp_path, cp=cp, provider=provider) as h:
            s = await connect(h)
            s.assign("a1", 5, run_for=0.5)
            await s.next_report()
            s.decide("a1", 5)
            await s.next_report()
            h.run_task.cancel()  # the agent process dies; the step keeps running
            await asyncio.gather(h.run_task, return_exceptions=True)
            await s.ended.wait()
            restarted = provider if reattach else FakeProvider()
            async with running_agent(tmp_path, cp=cp, provider=restarted) as h2:
                s2 = await connect(h2)
                held = [(a.attempt_id, a.fencing_token) for a in s2.hello.held_attempts]
                # Held either way: re-attached, or its outcome still waits in the journal (the
                # control plane must not declare it lost before the replay delivers it).
                assert held == [("a1", 5)]
                reports = await s2.reports_until_finished("a1")
                finished = reports[-1]
                assert finished.fencing_token == 5
                if reattach:
                    assert finished.finished.outcome == agent_pb2.ATTEMPT_OUTCOME_SUCCEEDED
                else:
                    assert finished.finished.error.error_class == "infrastructure"
                    assert "could not re-attach" in finished.finished.error.message

    run_async(scenario)


def test_a_started_agent_removes_the_work_dirs_of_attempts_it_no_longer_holds(
    tmp_path: Path,
) -> None:
    # What an agent killed while transferring an input leaves behind.
    stale = tmp_path / "agent" / "work" / "9e8d7c6b-5a49-4837-a261-504f3e2d1c0b" / "inputs"
    stale.mkdir(parents=True)
    (stale / ("c" * 64 + ".part")).write_bytes(b"x" * 4096)

    async def scenario() -> None:
        async with running_agent(tmp_path) as h:
            await connect(h)
            assert not stale.parent.exists()

    run_async(scenario)
