"""Queue-and-assign over a real control plane (gRPC, mutual TLS, SQLite and PostgreSQL) and a
real agent stream: a submission that finds a free matching slot is assigned in the
transaction that stores it (``attempt.queued`` and ``attempt.assigned`` share one
transaction), and the agent receives the Assign; one that finds none stays queued until a
slot frees and the scheduling pass assigns it. Commits are counted, nothing is timed."""

from __future__ import annotations

from sqlalchemy import select

from control_plane.store.db import Store
from control_plane.store.models import EventRow
from protos.meridian.v1 import agent_pb2, control_pb2
from tests.control_plane.api.test_edges import (
    AgentStream,
    Edge,
    edge,  # noqa: F401 (the fixture)
    enrolled_agent,
    hello,
    new_run,
    running_report,
    submission,
    submit,
)
from tests.support.polling import poll_until


def store_of(running: Edge) -> Store:
    store: Store = running.plane._services.store
    return store


def attempt_events(store: Store, attempt_id: str) -> list[tuple[str, object]]:
    return store.run_sync(
        lambda s: [
            (kind, at)
            for kind, at in s.execute(
                select(EventRow.kind, EventRow.created_at)
                .where(EventRow.attempt_id == attempt_id)
                .order_by(EventRow.id)
            )
        ]
    )


def test_a_free_slot_is_assigned_in_the_submitting_transaction(
    edge: Edge,  # noqa: F811 (the imported fixture)
) -> None:
    store = store_of(edge)
    agent = enrolled_agent(edge, "edge-qa")
    stream = AgentStream(agent.stub)
    edge.closers.append(stream.close)
    stream.send(hello("qa-now", capacity=3))
    stream.recv_until("welcome")
    run_id = new_run(edge)
    dispatcher = edge.plane._services.dispatcher
    # A submission that meets a running pass (a lease sweep, say) is left to that pass: try
    # up to three times (three free slots), one must be assigned in its own transaction.
    together = []
    for i in range(3):
        poll_until(lambda: not dispatcher.in_pass, message="no pass running")
        before = store.stats.by_use_case["queue_and_assign"]
        submit(edge, run_id, submission(f"qa#{i}", target="site=qa-now"))
        (assign,) = stream.recv_until("assign").assign.assignments
        assert assign.step_key == f"qa#{i}"
        events = attempt_events(store, assign.attempt_id)
        assert [kind for kind, _ in events] == ["attempt.queued", "attempt.assigned"]
        if store.stats.by_use_case["queue_and_assign"] == before + 1:
            together.append(assign.attempt_id)
            assert len({at for _, at in events}) == 1  # one transaction's clock
            break
    assert together, "no submission was assigned in its own transaction"


def test_without_a_free_slot_the_pass_assigns_it_once_one_frees(
    edge: Edge,  # noqa: F811 (the imported fixture)
) -> None:
    agent = enrolled_agent(edge, "edge-qa-full")
    stream = AgentStream(agent.stub)
    edge.closers.append(stream.close)
    stream.send(hello("qa-full", capacity=1))
    stream.recv_until("welcome")
    run_id = new_run(edge)
    submit(edge, run_id, submission("first#1", target="site=qa-full"))
    (first,) = stream.recv_until("assign").assign.assignments
    submit(edge, run_id, submission("second#1", target="site=qa-full"))

    def state_of(key: str) -> str:
        run = edge.control.GetRun(control_pb2.GetRunRequest(flow_run_id=run_id), timeout=10)
        (step,) = [s for s in run.steps if s.key == key]
        return step.attempts[-1].state

    assert state_of("second#1") == "QUEUED"  # the agent's one slot is taken
    stream.send(running_report(1, first))
    stream.recv_until("decisions")
    stream.send(finished_report(2, first))
    (second,) = stream.recv_until("assign").assign.assignments
    assert second.step_key == "second#1"
    poll_until(lambda: state_of("second#1") == "ASSIGNED", message="the second assignment")


def finished_report(seq: int, assign: agent_pb2.Assign) -> agent_pb2.AgentFrame:
    return agent_pb2.AgentFrame(
        reports=agent_pb2.ReportBatch(
            reports=[
                agent_pb2.Report(
                    seq=seq,
                    attempt_id=assign.attempt_id,
                    fencing_token=assign.fencing_token,
                    finished=agent_pb2.AttemptFinished(
                        outcome=agent_pb2.ATTEMPT_OUTCOME_SUCCEEDED, result_json="1"
                    ),
                )
            ]
        )
    )
