"""The shape of a SubmitSteps answer: a batch answers with every call's step run id, and with
the details of calls that existed before or reused a cached result (their outcome at once)."""

from __future__ import annotations

from control_plane.api.views import submit_answer
from control_plane.orchestration.values import SubmittedStep
from meridian.core.states import StepState


def test_a_batch_answers_cached_calls_with_their_outcome() -> None:
    calls = [
        SubmittedStep("sq#1", "s1", StepState.CACHED, existing=False, result_json="1"),
        SubmittedStep("sq#2", "s2", StepState.PENDING, existing=False),
        SubmittedStep("sq#3", "s3", StepState.COMPLETED, existing=True, result_json="9"),
    ]
    answer = submit_answer(calls, singles=0, batch_sizes=[3])
    (batch,) = answer.batches
    assert list(batch.step_run_ids) == ["s1", "s2", "s3"]
    details = {d.key: d for d in batch.existing}
    assert set(details) == {"sq#1", "sq#3"}  # the new PENDING call needs no details
    cached = details["sq#1"]
    assert (cached.state, cached.existing) == ("CACHED", False)
    assert (cached.outcome.state, cached.outcome.result_json) == ("CACHED", "1")
