"""The agent's side of result-store housekeeping (agent.results.housekeeping) against a real
directory and S3 (moto): sweeps list run objects in bounded pages, deletions remove exactly the
named objects of the agent's own stores (a missing one counts as deleted), and the frames
carrying both survive the protocol edge (agent.convert)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent import convert
from agent.actions import DeleteResultsAction, StoredObjectRef, SweepResultsAction
from agent.results import (
    FilesystemConfig,
    FilesystemStore,
    ResultNotFound,
    ResultStore,
    S3Store,
)
from agent.results.housekeeping import (
    MAX_PAGE_OBJECTS,
    Answer,
    ListedObject,
    ResultHousekeeper,
    ResultListingOut,
    ResultsDeletedOut,
    delete_objects,
    key_of,
)
from protos.meridian.v1 import agent_pb2
from tests.agent.results.conftest import StoreFactory, s3_config
from tests.support.deadlines import DEADLINE_S

RUNS = ["runs/r1/extract/a1/result", "runs/r1/load/a2/result", "runs/r2/extract/a3/result"]
LATER = timedelta(hours=2)


@pytest.fixture(params=["filesystem", "s3"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def put(store: ResultStore, key: str, data: bytes = b"{}") -> str:
    return store.put(key, [data], len(data), hashlib.sha256(data).hexdigest()).uri


def later() -> datetime:
    """A clock two hours ahead: every object put now is old enough to list."""
    return datetime.now(UTC) + LATER


class Answers:
    def __init__(self) -> None:
        self.items: list[Answer] = []
        self.arrived = asyncio.Event()

    async def send(self, answer: Answer) -> None:
        self.items.append(answer)
        self.arrived.set()

    async def until(self, done: Callable[[list[Answer]], bool]) -> None:
        async with asyncio.timeout(DEADLINE_S):
            while not done(self.items):
                self.arrived.clear()
                await self.arrived.wait()


def listings(answers: Answers) -> list[ResultListingOut]:
    return [a for a in answers.items if isinstance(a, ResultListingOut)]


def finished(items: list[Answer]) -> bool:
    return any(isinstance(a, ResultListingOut) and a.done for a in items)


async def sweep(keeper: ResultHousekeeper, answers: Answers, older_than_s: float) -> None:
    keeper.handle(SweepResultsAction("sw-1", older_than_s))
    await answers.until(finished)


def test_a_sweep_lists_run_objects_in_bounded_pages(store_for: StoreFactory) -> None:
    asyncio.run(_a_sweep_lists_run_objects_in_bounded_pages(store_for))


async def _a_sweep_lists_run_objects_in_bounded_pages(store_for: StoreFactory) -> None:
    store = store_for("scratch")
    uris = {put(store, key, key.encode()) for key in RUNS}
    put(store, "other/kept")  # not a run's object: never listed
    answers = Answers()
    keeper = ResultHousekeeper({"scratch": store}, answers.send, page_bytes=1, clock=later)

    await sweep(keeper, answers, 3600)

    pages = listings(answers)
    assert all(p.sweep_id == "sw-1" for p in pages)
    assert [len(p.objects) for p in pages] == [1, 1, 1, 0]  # the byte bound pages them
    assert [p.done for p in pages] == [False, False, False, True] and pages[-1].error == ""
    listed = [o for p in pages for o in p.objects]
    assert {o.uri for o in listed} == uris
    assert {o.store for o in listed} == {"scratch"}
    assert sorted(o.size for o in listed) == sorted(len(key) for key in RUNS)
    assert all(o.modified_ms > 0 for o in listed)


def test_a_sweep_leaves_out_objects_younger_than_its_age(store_for: StoreFactory) -> None:
    asyncio.run(_a_sweep_leaves_out_objects_younger_than_its_age(store_for))


async def _a_sweep_leaves_out_objects_younger_than_its_age(store_for: StoreFactory) -> None:
    store = store_for("scratch")
    put(store, RUNS[0])
    answers = Answers()
    keeper = ResultHousekeeper({"scratch": store}, answers.send)  # the real clock

    await sweep(keeper, answers, 3600)

    assert [(len(p.objects), p.done) for p in listings(answers)] == [(0, True)]


def test_pages_hold_at_most_a_thousand_objects(tmp_path: Path) -> None:
    asyncio.run(_pages_hold_at_most_a_thousand_objects(tmp_path))


async def _pages_hold_at_most_a_thousand_objects(tmp_path: Path) -> None:
    # A directory only: the bound is the agent's, whatever the store (1,005 puts to moto
    # would take half a minute).
    store = FilesystemStore("scratch", FilesystemConfig(tmp_path))
    for i in range(MAX_PAGE_OBJECTS + 5):
        put(store, f"runs/r/s/{i}/result")
    answers = Answers()
    keeper = ResultHousekeeper({"scratch": store}, answers.send, clock=later)

    await sweep(keeper, answers, 0)

    assert [len(p.objects) for p in listings(answers)] == [MAX_PAGE_OBJECTS, 5, 0]


def test_a_second_sweep_while_one_runs_is_refused_at_once(store_for: StoreFactory) -> None:
    asyncio.run(_a_second_sweep_while_one_runs_is_refused_at_once(store_for))


async def _a_second_sweep_while_one_runs_is_refused_at_once(store_for: StoreFactory) -> None:
    store = store_for("scratch")
    put(store, RUNS[0])
    release = asyncio.Event()
    answers = Answers()

    async def slow_send(answer: Answer) -> None:
        if isinstance(answer, ResultListingOut) and answer.sweep_id == "sw-1":
            await release.wait()  # the first sweep's pages wait on a slow stream
        await answers.send(answer)

    keeper = ResultHousekeeper({"scratch": store}, slow_send, clock=later)
    keeper.handle(SweepResultsAction("sw-1", 0))
    keeper.handle(SweepResultsAction("sw-2", 0))
    await answers.until(finished)
    assert [(a.sweep_id, a.done, a.error) for a in listings(answers)] == [
        ("sw-2", True, "a sweep already runs on this agent")
    ]
    release.set()
    await answers.until(lambda items: sum(finished([a]) for a in items) == 2)
    assert [len(p.objects) for p in listings(answers) if p.sweep_id == "sw-1"] == [1, 0]
    await keeper.close()


def test_deletion_removes_named_objects_and_counts_missing_ones(
    store_for: StoreFactory,
) -> None:
    asyncio.run(_deletion_removes_named_objects_and_counts_missing_ones(store_for))


async def _deletion_removes_named_objects_and_counts_missing_ones(
    store_for: StoreFactory,
) -> None:
    store = store_for("scratch")
    gone = put(store, RUNS[0], b"12345")
    kept = put(store, RUNS[1])
    missing = store.location("runs/r9/x/a/result", 0, "0" * 64).uri
    answers = Answers()
    keeper = ResultHousekeeper({"scratch": store}, answers.send)

    objects = (StoredObjectRef("scratch", gone, 5), StoredObjectRef("scratch", missing, 7))
    keeper.handle(DeleteResultsAction("req-1", objects))
    await answers.until(lambda items: bool(items))

    assert answers.items == [ResultsDeletedOut("req-1", 2, 5, ())]
    with pytest.raises(ResultNotFound):
        store.stat(RUNS[0])
    assert store.stat(RUNS[1]).size == 2 and kept
    # Deleting again is harmless: the object is already gone.
    again = delete_objects({"scratch": store}, DeleteResultsAction("req-2", objects[:1]))
    assert (again.count, again.bytes, again.errors) == (1, 0, ())


def test_only_run_objects_of_the_agents_own_stores_are_deleted(
    store_for: StoreFactory,
) -> None:
    store = store_for("scratch")
    outside = put(store, "other/precious")
    run_object = put(store, RUNS[0])
    foreign = "s3://someone-elses-bucket/runs/r1/extract/a1/result"
    action = DeleteResultsAction(
        "req",
        (
            StoredObjectRef("scratch", outside),
            StoredObjectRef("scratch", foreign),
            StoredObjectRef("elsewhere", run_object),
        ),
    )

    answer = delete_objects({"scratch": store}, action)

    assert answer.count == 0
    assert [line.split(": ", 1)[0] for line in answer.errors] == [outside, foreign, run_object]
    assert "not an object under runs/ of store 'scratch'" in answer.errors[0]
    assert "no result store 'elsewhere' (its stores: scratch)" in answer.errors[2]
    assert store.stat("other/precious").size == 2 and store.stat(RUNS[0]).size == 2


def test_key_of_accepts_only_uris_the_store_itself_names(store_for: StoreFactory) -> None:
    store = store_for("scratch")
    uri = store.location("runs/r1/a~23b/x/result", 0, "0" * 64).uri
    assert key_of(store, uri) == "runs/r1/a~23b/x/result"
    assert key_of(store, uri + "/..") is None
    assert key_of(store, "not a uri") is None


def test_a_store_that_cannot_be_listed_is_named_and_the_others_listed(
    s3_endpoint: str, store_for: StoreFactory
) -> None:
    asyncio.run(
        _a_store_that_cannot_be_listed_is_named_and_the_others_listed(s3_endpoint, store_for)
    )


async def _a_store_that_cannot_be_listed_is_named_and_the_others_listed(
    s3_endpoint: str, store_for: StoreFactory
) -> None:
    good = store_for("scratch")
    put(good, RUNS[0])
    broken = S3Store("broken", s3_config(s3_endpoint, "p/", bucket="no-such-bucket"))
    answers = Answers()
    keeper = ResultHousekeeper({"scratch": good, "broken": broken}, answers.send, clock=later)

    await sweep(keeper, answers, 0)

    pages = listings(answers)
    assert [o.store for p in pages for o in p.objects] == ["scratch"]
    assert pages[-1].done and pages[-1].error.startswith("broken: ")


def test_housekeeping_frames_cross_the_protocol_edge() -> None:
    sweep_frame = agent_pb2.ControlFrame(
        sweep_results=agent_pb2.SweepResults(sweep_id="s", older_than_s=60.5)
    )
    assert convert.action_from_proto(sweep_frame) == SweepResultsAction("s", 60.5)
    delete_frame = agent_pb2.ControlFrame(
        delete_results=agent_pb2.DeleteResults(
            request_id="r", objects=[agent_pb2.StoredObject(store="a", uri="file:///x", size=3)]
        )
    )
    assert convert.action_from_proto(delete_frame) == DeleteResultsAction(
        "r", (StoredObjectRef("a", "file:///x", 3),)
    )
    page = convert.housekeeping_frame(
        ResultListingOut("s", (ListedObject("a", "file:///x", 3, 1700),), True, "b: down")
    )
    listing = page.result_listing
    assert (listing.sweep_id, listing.done, listing.error) == ("s", True, "b: down")
    assert [(o.store, o.uri, o.size, o.modified_unix_ms) for o in listing.objects] == [
        ("a", "file:///x", 3, 1700)
    ]
    answer = convert.housekeeping_frame(ResultsDeletedOut("r", 2, 9, ("file:///y: denied",)))
    deleted = answer.results_deleted
    assert (deleted.request_id, deleted.count, deleted.bytes, list(deleted.errors)) == (
        "r",
        2,
        9,
        ["file:///y: denied"],
    )
