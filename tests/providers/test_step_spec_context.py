"""Providers that write a step spec for meridian.stepexec carry the run context in it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from meridian.core.runcontext import RunContext
from providers.aws_ecs.task import environment
from providers.base import ExecutionSpec
from providers.kubernetes.manifest import step_spec_json

CONTEXT = RunContext(run_id="run-1", step_key="load#1", attempt_id="att-1", attempt_number=2,
                     environment="k8s-prod", agent_id="agent-7")  # fmt: skip
PLAIN = ExecutionSpec(
    attempt_id="att-1", flow_run_id="run-1", step_run_id="sr-1", step_key="load#1",
    step_name="load", attempt_number=2, module="m", function="f", inputs_json="{}",
    bundle_dir=None, work_dir=Path("/tmp/unused"),
)  # fmt: skip


def test_context_fields_are_empty_without_a_context_and_round_trip_with_one() -> None:
    assert PLAIN.context_fields() == {}
    fields = replace(PLAIN, context=CONTEXT).context_fields()
    assert RunContext.from_dict(fields["context"]) == CONTEXT


def test_kubernetes_and_ecs_step_specs_carry_the_context() -> None:
    spec = replace(PLAIN, context=CONTEXT)
    k8s = json.loads(step_spec_json(spec, "/code"))
    ecs = json.loads(environment(spec, True, "/code")["MERIDIAN_STEP_SPEC"])
    for doc in (k8s, ecs):
        assert RunContext.from_dict(doc["context"]) == CONTEXT
    assert "context" not in json.loads(step_spec_json(PLAIN, "/code"))
