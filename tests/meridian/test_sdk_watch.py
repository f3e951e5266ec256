"""The runner's watcher with batched updates: outcomes of a batch resolve in one pass."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence

from meridian import wait
from meridian.models import RunUpdate, StepOutcome
from meridian.sdk._watch import RunWatcher
from meridian.sdk.context import FlowContext, activate
from tests.meridian.test_sdk_step import RecordingSubmitter, echo
from tests.support.deadlines import DEADLINE_S


class CountingContext(FlowContext):
    """A flow context that records how outcomes reach it."""

    def __init__(self) -> None:
        super().__init__("run-1", RecordingSubmitter())
        self.passes: list[int] = []

    def resolve_many(self, outcomes: Sequence[StepOutcome]) -> None:
        self.passes.append(len(outcomes))
        super().resolve_many(outcomes)


def completed(event_id: int, key: str, value: object) -> RunUpdate:
    outcome = StepOutcome(f"sr-{key}", key, "COMPLETED", json.dumps(value))
    return RunUpdate(event_id, None, "step.completed", step_key=key, step_outcome=outcome)


def run_end(event_id: int) -> RunUpdate:
    return RunUpdate(event_id, None, "run.completed", run_state="COMPLETED")


class BatchClient:
    """Answers ``watch_run_batches`` with prepared batches, then ends."""

    def __init__(self, batches: list[list[RunUpdate]]) -> None:
        self.batches = batches
        self.opened: list[int] = []

    def watch_run(self, flow_run_id: str, after_event_id: int = 0) -> Iterator[RunUpdate]:
        raise AssertionError("the watcher asks for batches when the client offers them")

    def watch_run_batches(
        self, flow_run_id: str, after_event_id: int = 0
    ) -> Iterator[list[RunUpdate]]:
        self.opened.append(after_event_id)
        return iter(self.batches)


class SingleClient:
    """A client without batches (a test double, an older SDK): one update at a time."""

    def __init__(self, updates: list[RunUpdate]) -> None:
        self.updates = updates

    def watch_run(self, flow_run_id: str, after_event_id: int = 0) -> Iterator[RunUpdate]:
        return iter(self.updates)


def watch(client: object, context: FlowContext, seen: list[RunUpdate]) -> RunWatcher:
    watcher = RunWatcher(client, context, seen.append)  # type: ignore[arg-type]
    watcher.start()
    assert watcher.join(DEADLINE_S)
    return watcher


def test_a_batch_of_outcomes_resolves_every_future_in_one_pass() -> None:
    context = CountingContext()
    with activate(context):
        futures = echo.map(range(1000))
    batch = [completed(i + 1, f"echo#{i + 1}", i * 2) for i in range(1000)]
    seen: list[RunUpdate] = []
    watcher = watch(BatchClient([batch, [run_end(1001)]]), context, seen)
    assert context.passes == [1000]
    assert wait(futures, timeout=DEADLINE_S) == [i * 2 for i in range(1000)]
    assert [u.event_id for u in seen] == list(range(1, 1002))  # on_update: each, in order
    assert watcher.run_state == "COMPLETED" and watcher.last_event_id == 1001


def test_outcomes_streamed_before_their_calls_are_kept_until_submitted() -> None:
    # A resumed run replays stored outcomes before the body reaches the calls.
    context = CountingContext()
    batch = [completed(i + 1, f"echo#{i + 1}", f"v{i}") for i in range(3)]
    watch(BatchClient([batch, [run_end(4)]]), context, [])
    with activate(context):
        futures = echo.map(["a", "b", "c"])
    assert [f.result(timeout=0) for f in futures] == ["v0", "v1", "v2"]


def test_updates_seen_already_are_skipped_inside_a_batch() -> None:
    context = CountingContext()
    with activate(context):
        (future,) = echo.map([1])
    replayed = completed(1, "echo#1", "first")
    client = BatchClient([[replayed], [replayed, completed(1, "echo#1", "again"), run_end(2)]])
    seen: list[RunUpdate] = []
    watch(client, context, seen)
    assert future.result(timeout=0) == "first"
    assert [u.event_id for u in seen] == [1, 2]


def test_a_client_without_batches_is_read_one_update_at_a_time() -> None:
    context = CountingContext()
    with activate(context):
        futures = echo.map([1, 2])
    updates = [completed(1, "echo#1", 10), completed(2, "echo#2", 20), run_end(3)]
    watch(SingleClient(updates), context, [])
    assert wait(futures, timeout=DEADLINE_S) == [10, 20]
    assert context.passes == [1, 1]


class BatchView:
    """A progress view that takes whole batches (like the CLI's)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __call__(self, update: RunUpdate) -> None:
        raise AssertionError("a view with `updates` gets whole batches")

    def updates(self, batch: Sequence[RunUpdate]) -> None:
        self.batches.append([u.event_id for u in batch])


def test_a_view_that_takes_batches_gets_each_batch_whole_up_to_the_run_end() -> None:
    context = CountingContext()
    with activate(context):
        echo.map([1, 2, 3])
    first = [completed(1, "echo#1", 1), completed(2, "echo#2", 2)]
    last = [completed(3, "echo#3", 3), run_end(4), completed(5, "late#1", 0)]
    view = BatchView()
    watcher = RunWatcher(BatchClient([first, last]), context, view)  # type: ignore[arg-type]
    watcher.start()
    assert watcher.join(DEADLINE_S)
    assert view.batches == [[1, 2], [3, 4]]
