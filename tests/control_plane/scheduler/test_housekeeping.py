"""The housekeeping loop and the garbage collector's sweeps (control_plane.scheduler.housekeeping)
against a real store and real agent sessions, the agents' answers given at the stream's edge:
queued deletions go to a connected agent advertising the store and are removed once confirmed
(a failure keeps its row); unanswered ones are sent again after the delay, also by a restarted
control plane; a collection reports and removes orphans only, skips environments without an
agent, and never runs two sweeps on one agent."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from sqlalchemy import select

from control_plane.orchestration.housekeeping import (
    DeleteResultsOut,
    ResultListingIn,
    ResultsDeletedIn,
    StoredObjectValue,
    SweepResultsOut,
)
from control_plane.orchestration.values import StepSubmission
from control_plane.scheduler.housekeeping import CollectReport, Housekeeping
from control_plane.scheduler.registry import AgentRegistry, AgentSession, Outgoing
from control_plane.store.db import Store
from control_plane.store.models import AuditRecordRow, FlowRunRow, ResultDeletionRow
from control_plane.usecases.agents import ConnectedAgent
from control_plane.usecases.steps import submit_steps
from tests.control_plane.usecases.helpers import T0, new_run, run_at, spec
from tests.control_plane.usecases.test_cleanup import finish, produce
from tests.support.deadlines import DEADLINE_S

T = TypeVar("T")
OLD_MS = 1_000  # objects listed as modified long ago
STORE = "scratch"


def session_of(agent_id: str, environment: str, stores: tuple[str, ...] = (STORE,)) -> AgentSession:
    agent = ConnectedAgent(
        agent_id=agent_id, name=agent_id, environment=environment, labels={},
        providers=frozenset({"process"}), capacity=2, in_use=0, draining=False,
        last_applied_seq=0,
    )  # fmt: skip
    session = AgentSession(agent, f"session-{agent_id}")
    session.result_stores = stores
    return session


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(DEADLINE_S):
            return await scenario()

    return asyncio.run(bounded())


async def next_frame(session: AgentSession) -> Outgoing:
    return await session.outbox.get()


def queue_rows(store: Store, environment: str, uris: list[str], store_name: str = STORE) -> None:
    store.run_sync(
        lambda s: s.add_all(
            ResultDeletionRow(
                environment=environment, store=store_name, uri=uri, size=10, reason="run deleted",
                created_at=T0, tries=0, last_error="",
            )
            for uri in uris
        )
    )  # fmt: skip


def rows(store: Store) -> list[ResultDeletionRow]:
    return store.run_sync(
        lambda s: list(s.scalars(select(ResultDeletionRow).order_by(ResultDeletionRow.id)))
    )


def uri(n: int, run_id: str = "r") -> str:
    return f"file:///srv/results/runs/{run_id}/s~231/a{n}/result"


def test_queued_deletions_go_to_an_agent_with_the_store_and_settle_on_its_answer(
    store: Store,
) -> None:
    queue_rows(store, "aws-demo", [uri(1), uri(2), uri(3)])
    queue_rows(store, "gcp-demo", [uri(4)])  # no agent of gcp-demo is connected

    async def scenario() -> None:
        registry = AgentRegistry()
        without = session_of("a0", "aws-demo", stores=())
        agent = session_of("a1", "aws-demo")
        registry.add(without)
        registry.add(agent)
        keeper = Housekeeping(store, registry, interval_s=3600)
        keeper.start()
        keeper.wake()
        frame = await next_frame(agent)
        assert isinstance(frame, DeleteResultsOut)
        assert [(o.store, o.uri, o.size) for o in frame.objects] == [
            (STORE, uri(n), 10) for n in (1, 2, 3)
        ]
        assert without.outbox.empty()  # it has no such store
        answer = ResultsDeletedIn(frame.request_id, 2, 20, (f"{uri(2)}: AccessDenied",))
        await keeper.on_results_deleted("a1", answer)
        await keeper.stop()

    run(scenario)
    left = rows(store)
    assert [(r.environment, r.uri, r.last_error, r.sent_at is None) for r in left] == [
        ("aws-demo", uri(2), "AccessDenied", False),
        ("gcp-demo", uri(4), "", True),
    ]


def test_an_answer_that_does_not_account_for_every_object_confirms_none(store: Store) -> None:
    queue_rows(store, "aws-demo", [uri(1), uri(2)])

    async def scenario() -> None:
        registry = AgentRegistry()
        agent = session_of("a1", "aws-demo")
        registry.add(agent)
        keeper = Housekeeping(store, registry, interval_s=3600)
        keeper.start()
        keeper.wake()
        frame = await next_frame(agent)
        assert isinstance(frame, DeleteResultsOut)
        await keeper.on_results_deleted("someone-else", ResultsDeletedIn(frame.request_id, 2, 0))
        await keeper.on_results_deleted("a1", ResultsDeletedIn(frame.request_id, 1, 0))
        await keeper.stop()

    run(scenario)
    assert [r.last_error for r in rows(store)] == ["the agent confirmed 1 of 2 deletions"] * 2


def test_unanswered_deletions_are_sent_again_after_a_restart(store: Store) -> None:
    queue_rows(store, "aws-demo", [uri(1)])

    async def scenario() -> None:
        registry = AgentRegistry()
        agent = session_of("a1", "aws-demo")
        registry.add(agent)
        before = Housekeeping(store, registry, interval_s=3600)
        before.start()
        before.wake()
        first = await next_frame(agent)
        await before.stop()  # the control plane stops before the agent answers
        after = Housekeeping(store, registry, interval_s=0.05, resend_after_s=0.2)
        after.start()
        again = await next_frame(agent)
        assert isinstance(first, DeleteResultsOut) and isinstance(again, DeleteResultsOut)
        assert again.objects == first.objects and again.request_id != first.request_id
        await after.on_results_deleted("a1", ResultsDeletedIn(again.request_id, 1, 10))
        await after.stop()

    run(scenario)
    assert rows(store) == []


def test_runs_past_their_retention_are_deleted_and_their_objects_sent(store: Store) -> None:
    old = new_run(store)
    ref = produce(store, old, "extract#1")
    finish(store, old)  # ended at T0
    recent = new_run(store)
    finish(store, recent, T0 + dt.timedelta(days=395))
    store.clock = lambda: T0 + dt.timedelta(days=400)

    async def scenario() -> DeleteResultsOut:
        registry = AgentRegistry()
        agent = session_of("a1", "aws-demo")
        registry.add(agent)
        keeper = Housekeeping(store, registry, interval_s=0.05, run_retention_days=30)
        keeper.start()
        frame = await next_frame(agent)
        await keeper.stop()
        assert isinstance(frame, DeleteResultsOut)
        return frame

    frame = run(scenario)
    assert [o.uri for o in frame.objects] == [ref.uri]
    runs = store.run_sync(lambda s: set(s.scalars(select(FlowRunRow.id))))
    assert runs == {recent}


def collect_setup(store: Store) -> tuple[str, str, str]:
    """A finished run with a stored result (referenced), and a running one (live): the URI of
    the referenced object, the live run's id, and a finished-and-gone run's orphan URI."""
    done = new_run(store)
    referenced = produce(store, done, "extract#1").uri
    finish(store, done)
    live = new_run(store)
    run_at(store, T0, submit_steps, live, [StepSubmission("s#1", spec(), '{"args": []}')])
    return referenced, live, uri(9, run_id="00000000-dead-beef-0000-000000000000")


async def collect_with(
    keeper: Housekeeping,
    agent: AgentSession,
    pages: Callable[[str], list[ResultListingIn]],
    *,
    dry_run: bool,
    deleted: Callable[[DeleteResultsOut], ResultsDeletedIn] | None = None,
) -> tuple[CollectReport, list[DeleteResultsOut]]:
    """Run a collection, answering as the agent would: ``pages`` for its sweep, ``deleted``
    for each deletion request."""
    task = asyncio.ensure_future(
        keeper.collect(environment="", older_than_s=3600, dry_run=dry_run, scope=(), budget_s=30)
    )
    sweep = await next_frame(agent)
    assert isinstance(sweep, SweepResultsOut) and sweep.older_than_s == 3600
    for page in pages(sweep.sweep_id):
        keeper.on_listing("a1", page)
    requests = []
    while deleted is not None and not task.done():
        getter = asyncio.ensure_future(next_frame(agent))
        await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
        if not getter.done():
            getter.cancel()
            break
        request = getter.result()
        assert isinstance(request, DeleteResultsOut)
        requests.append(request)
        await keeper.on_results_deleted("a1", deleted(request))
    return await task, requests


def audit_details(store: Store, action: str) -> list[dict[str, Any]]:
    found = store.run_sync(
        lambda s: list(s.scalars(select(AuditRecordRow).where(AuditRecordRow.action == action)))
    )
    return [json.loads(r.details) for r in found]


def test_a_dry_run_reports_only_orphans_and_deletes_nothing(store: Store) -> None:
    referenced, live, orphan = collect_setup(store)

    def pages(sweep_id: str) -> list[ResultListingIn]:
        objects = [
            StoredObjectValue(STORE, referenced, 5, OLD_MS),
            StoredObjectValue(STORE, uri(1, run_id=live), 6, OLD_MS),  # its attempt still runs
            StoredObjectValue(STORE, orphan, 7, OLD_MS),
        ]
        return [
            ResultListingIn(sweep_id, tuple(objects[:2]), False),
            ResultListingIn(sweep_id, tuple(objects[2:]), True),
        ]

    async def scenario() -> tuple[CollectReport, list[DeleteResultsOut]]:
        registry = AgentRegistry()
        agent = session_of("a1", "aws-demo")
        registry.add(agent)
        keeper = Housekeeping(store, registry, interval_s=3600)
        return await collect_with(keeper, agent, pages, dry_run=True)

    report, requests = run(scenario)
    assert requests == []
    [tally] = report.tallies
    assert (tally.environment, tally.store, tally.objects, tally.orphans) == (
        "aws-demo",
        STORE,
        3,
        1,
    )
    assert (tally.orphan_bytes, tally.deleted, tally.errors) == (7, 0, [])
    assert report.skipped == ["gcp-demo: no agent of this environment is connected"]
    [record] = audit_details(store, "results.collected")
    assert record["dry_run"] is True and record["stores"][0]["orphans"] == 1
    assert record["skipped"] == report.skipped


def test_a_collection_deletes_the_orphans_and_counts_failures(store: Store) -> None:
    referenced, _, orphan = collect_setup(store)
    second = uri(8, run_id="00000000-dead-beef-0000-000000000001")

    def pages(sweep_id: str) -> list[ResultListingIn]:
        objects = (
            StoredObjectValue(STORE, referenced, 5, OLD_MS),
            StoredObjectValue(STORE, orphan, 7, OLD_MS),
            StoredObjectValue("other", second, 9, OLD_MS),
        )
        return [ResultListingIn(sweep_id, objects, True, "broken: NoSuchBucket")]

    def answer(request: DeleteResultsOut) -> ResultsDeletedIn:
        assert {o.uri for o in request.objects} == {orphan, second}
        return ResultsDeletedIn(request.request_id, 1, 7, (f"{second}: AccessDenied",))

    async def scenario() -> tuple[CollectReport, list[DeleteResultsOut]]:
        registry = AgentRegistry()
        agent = session_of("a1", "aws-demo")
        registry.add(agent)
        keeper = Housekeeping(store, registry, interval_s=3600)
        return await collect_with(keeper, agent, pages, dry_run=False, deleted=answer)

    report, requests = run(scenario)
    assert len(requests) == 1
    found = {t.store: t for t in report.tallies}
    assert (found[STORE].orphans, found[STORE].deleted) == (1, 1)
    assert (found["other"].orphans, found["other"].deleted) == (1, 0)
    assert found["other"].errors == [f"{second}: AccessDenied"]
    assert found["broken"].errors == ["listing failed: NoSuchBucket"]


def test_one_sweep_per_agent_and_a_disconnect_ends_it(store: Store) -> None:
    async def scenario() -> tuple[CollectReport, CollectReport]:
        registry = AgentRegistry()
        agent = session_of("a1", "aws-demo")
        registry.add(agent)
        keeper = Housekeeping(store, registry, interval_s=3600)
        first = asyncio.ensure_future(
            keeper.collect(environment="aws-demo", older_than_s=60, dry_run=True, scope=(),
                           budget_s=30)
        )  # fmt: skip
        assert isinstance(await next_frame(agent), SweepResultsOut)
        second = await keeper.collect(
            environment="aws-demo", older_than_s=60, dry_run=True, scope=(), budget_s=30
        )
        keeper.agent_gone("a1")
        return await first, second

    first, second = run(scenario)
    assert second.tallies == []
    assert second.skipped == ["aws-demo: a sweep already runs on its agents; try again later"]
    [tally] = first.tallies
    assert tally.store == "" and tally.errors == ["the agent disconnected during the listing"]


BAD_URI = (StoredObjectValue(STORE, "file:///with space/runs/r/s/a/result", 1, OLD_MS),)
MANY_STORES = tuple(StoredObjectValue(f"s{i}", uri(i), 1, OLD_MS) for i in range(65))


@pytest.mark.parametrize(
    ("objects", "why"),
    [
        (BAD_URI, "the agent's listing was refused: a listed object has no URI, a URI with"),
        (MANY_STORES, "the agent listed more than 64 stores"),
    ],
)
def test_a_listing_out_of_bounds_ends_the_sweep_with_why(
    store: Store, objects: tuple[StoredObjectValue, ...], why: str
) -> None:
    def pages(sweep_id: str) -> list[ResultListingIn]:
        return [ResultListingIn(sweep_id, objects, False)]

    async def scenario() -> tuple[CollectReport, list[DeleteResultsOut]]:
        registry = AgentRegistry()
        agent = session_of("a1", "aws-demo")
        registry.add(agent)
        keeper = Housekeeping(store, registry, interval_s=3600)
        return await collect_with(keeper, agent, pages, dry_run=False)

    report, requests = run(scenario)
    assert requests == []
    [tally] = report.tallies
    assert tally.objects == 0 and tally.store == ""
    assert tally.errors[0].startswith(why)


def test_every_store_of_an_environment_is_swept_once_through_an_agent_that_has_it(
    store: Store,
) -> None:
    referenced, _, orphan = collect_setup(store)
    spoof_orphan = uri(7, run_id="00000000-dead-beef-0000-000000000002")

    async def scenario() -> tuple[CollectReport, list[tuple[str, DeleteResultsOut]]]:
        registry = AgentRegistry()
        first = session_of("a1", "aws-demo", (STORE,))
        second = session_of("a2", "aws-demo", (STORE, "spoof"))  # the only one with "spoof"
        registry.add(first)
        registry.add(second)
        keeper = Housekeeping(store, registry, interval_s=3600)
        task = asyncio.ensure_future(
            keeper.collect(
                environment="aws-demo", older_than_s=60, dry_run=False, scope=(), budget_s=30
            )
        )
        # a2 has the most stores: it judges both; a1 is not needed.
        sweep = await next_frame(second)
        assert isinstance(sweep, SweepResultsOut)
        objects = (
            StoredObjectValue(STORE, referenced, 5, OLD_MS),
            StoredObjectValue(STORE, orphan, 7, OLD_MS),
            StoredObjectValue("spoof", spoof_orphan, 3, OLD_MS),
        )
        keeper.on_listing("a2", ResultListingIn(sweep.sweep_id, objects, True))
        request = await next_frame(second)
        assert isinstance(request, DeleteResultsOut)
        assert {o.uri for o in request.objects} == {orphan, spoof_orphan}
        await keeper.on_results_deleted("a2", ResultsDeletedIn(request.request_id, 2, 10, ()))
        report = await task
        assert first.outbox.empty()
        return report, [("a2", request)]

    report, _ = run(scenario)
    found = {t.store: t for t in report.tallies}
    assert set(found) == {STORE, "spoof"} and found["spoof"].deleted == 1
    assert report.skipped == []


def test_a_store_only_a_second_agent_has_is_swept_through_that_agent(store: Store) -> None:
    _, _, orphan = collect_setup(store)
    spoof_orphan = uri(7, run_id="00000000-dead-beef-0000-000000000002")

    async def scenario() -> CollectReport:
        registry = AgentRegistry()
        first = session_of("a1", "aws-demo", (STORE, "alt"))
        second = session_of("a2", "aws-demo", ("spoof",))
        registry.add(first)
        registry.add(second)
        keeper = Housekeeping(store, registry, interval_s=3600)
        task = asyncio.ensure_future(
            keeper.collect(
                environment="aws-demo", older_than_s=60, dry_run=True, scope=(), budget_s=30
            )
        )
        sweeps = {}
        for agent in (first, second):
            frame = await next_frame(agent)
            assert isinstance(frame, SweepResultsOut)
            sweeps[agent.agent.agent_id] = frame.sweep_id
        # Each lists all it has; a store listed by both is judged once (by the first here).
        both = StoredObjectValue(STORE, orphan, 7, OLD_MS)
        keeper.on_listing("a1", ResultListingIn(sweeps["a1"], (both,), True))
        spoof = StoredObjectValue("spoof", spoof_orphan, 3, OLD_MS)
        keeper.on_listing("a2", ResultListingIn(sweeps["a2"], (spoof, both), True))
        return await task

    report = run(scenario)
    found = {t.store: t for t in report.tallies}
    assert (found[STORE].objects, found[STORE].orphans) == (1, 1)
    assert (found["spoof"].objects, found["spoof"].orphans) == (1, 1)
