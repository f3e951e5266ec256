"""Deployments as the SDK and CLI see them: plain values and their protobuf conversions
(kept out of ``models``/``_convert`` so the deployment surface stays in one place)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from meridian.core.convert import time_from_ms
from protos.meridian.v1 import control_pb2


@dataclass(frozen=True)
class ScheduleRequest:
    """One ``--schedule`` as sent: the codec JSON definition and its options."""

    definition: dict[str, Any]
    parameters: dict[str, Any] = field(default_factory=dict)
    catch_up: str = "skip"
    catch_up_window_s: float = 0.0
    max_catch_up_runs: int | None = None  # None: the server's default (10)
    jitter_s: float = 0.0
    schedule_id: str = ""


@dataclass(frozen=True)
class OutcomeTriggerRequest:
    upstream_deployment: str
    states: tuple[str, ...] = ()
    run_id_parameter: str = ""
    result_parameter: str = ""


@dataclass(frozen=True)
class DeploymentRequest:
    """What ``meridian deploy`` sends (``CreateDeploymentRequest``)."""

    name: str
    flow_name: str
    entrypoint: str
    bundle_sha256: str
    parameter_schema: dict[str, Any]
    parameters: dict[str, Any] = field(default_factory=dict)
    runner_target: str = ""
    description: str = ""
    tags: tuple[str, ...] = ()
    schedules: tuple[ScheduleRequest, ...] = ()
    concurrency: int = 0
    concurrency_overflow: str = ""
    on_runner_lost: str = ""
    max_runner_resumes: int | None = None  # None: the server's default (3); 0: fail when lost
    triggers: tuple[OutcomeTriggerRequest, ...] = ()
    flow_concurrency: tuple[str, ...] = ()  # @flow(concurrency=...): limits each run holds


@dataclass(frozen=True)
class ScheduleInfo:
    schedule_id: str
    description: str
    definition: dict[str, Any]
    parameters: dict[str, Any]
    catch_up: str
    catch_up_window_s: float
    max_catch_up_runs: int
    jitter_s: float
    paused: bool
    next_fires: list[datetime]


@dataclass(frozen=True)
class DeploymentRun:
    flow_run_id: str
    state: str
    trigger: str
    version: int
    created_at: datetime | None
    parent_run_id: str


@dataclass(frozen=True)
class DeploymentInfo:
    deployment_id: str
    name: str
    version: int
    paused: bool
    flow_name: str
    entrypoint: str
    bundle_sha256: str
    description: str
    tags: list[str]
    runner_target: str
    parameters: dict[str, Any]
    parameter_schema: dict[str, Any]
    schedules: list[ScheduleInfo]
    concurrency: int
    concurrency_overflow: str
    on_runner_lost: str
    max_runner_resumes: int
    triggers: list[OutcomeTriggerRequest]
    created_at: datetime | None
    created_by: str
    active_runs: int
    queued_runs: int
    recent_runs: list[DeploymentRun]
    flow_concurrency: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TriggerResult:
    flow_run_id: str
    existing: bool
    state: str
    message: str


def request_to_proto(spec: DeploymentRequest) -> control_pb2.CreateDeploymentRequest:
    return control_pb2.CreateDeploymentRequest(
        spec=control_pb2.DeploymentSpec(
            name=spec.name,
            flow_name=spec.flow_name,
            entrypoint=spec.entrypoint,
            bundle_sha256=spec.bundle_sha256,
            description=spec.description,
            tags=list(spec.tags),
            runner_target=spec.runner_target,
            parameters_json=json.dumps(spec.parameters),
            parameter_schema_json=json.dumps(spec.parameter_schema),
            schedules=[
                control_pb2.ScheduleSpec(
                    schedule_id=s.schedule_id,
                    definition_json=json.dumps(s.definition),
                    parameters_json=json.dumps(s.parameters),
                    catch_up=s.catch_up,
                    catch_up_window_s=s.catch_up_window_s,
                    max_catch_up_runs=s.max_catch_up_runs,
                    jitter_s=s.jitter_s,
                )
                for s in spec.schedules
            ],
            concurrency=spec.concurrency,
            concurrency_overflow=spec.concurrency_overflow,
            on_runner_lost=spec.on_runner_lost,
            max_runner_resumes=spec.max_runner_resumes,
            triggers=[
                control_pb2.OutcomeTrigger(
                    upstream_deployment=t.upstream_deployment,
                    states=list(t.states),
                    run_id_parameter=t.run_id_parameter,
                    result_parameter=t.result_parameter,
                )
                for t in spec.triggers
            ],
            flow_concurrency=list(spec.flow_concurrency),
        )
    )


def info_from_proto(info: control_pb2.DeploymentInfo) -> DeploymentInfo:
    spec = info.spec
    return DeploymentInfo(
        deployment_id=info.deployment_id,
        name=spec.name,
        version=info.version,
        paused=info.paused,
        flow_name=spec.flow_name,
        entrypoint=spec.entrypoint,
        bundle_sha256=spec.bundle_sha256,
        description=spec.description,
        tags=list(spec.tags),
        runner_target=spec.runner_target,
        parameters=_object(spec.parameters_json),
        parameter_schema=_object(spec.parameter_schema_json),
        schedules=[_schedule(s) for s in spec.schedules],
        concurrency=spec.concurrency,
        concurrency_overflow=spec.concurrency_overflow,
        on_runner_lost=spec.on_runner_lost,
        max_runner_resumes=spec.max_runner_resumes,
        triggers=[
            OutcomeTriggerRequest(
                t.upstream_deployment, tuple(t.states), t.run_id_parameter, t.result_parameter
            )
            for t in spec.triggers
        ],
        created_at=time_from_ms(info.created_at_unix_ms),
        created_by=info.created_by,
        active_runs=info.active_runs,
        queued_runs=info.queued_runs,
        recent_runs=[
            DeploymentRun(
                r.flow_run_id,
                r.state,
                r.trigger,
                r.deployment_version,
                time_from_ms(r.created_at_unix_ms),
                r.parent_run_id,
            )
            for r in info.recent_runs
        ],
        flow_concurrency=list(spec.flow_concurrency),
    )


def _schedule(s: control_pb2.ScheduleSpec) -> ScheduleInfo:
    return ScheduleInfo(
        schedule_id=s.schedule_id,
        description=s.description,
        definition=_object(s.definition_json),
        parameters=_object(s.parameters_json),
        catch_up=s.catch_up,
        catch_up_window_s=s.catch_up_window_s,
        max_catch_up_runs=s.max_catch_up_runs,
        jitter_s=s.jitter_s,
        paused=s.paused,
        next_fires=[t for t in (time_from_ms(ms) for ms in s.next_fire_unix_ms) if t],
    )


def trigger_from_proto(answer: control_pb2.TriggerDeploymentResponse) -> TriggerResult:
    return TriggerResult(answer.flow_run_id, answer.existing, answer.state, answer.message)


def _object(text: str) -> dict[str, Any]:
    value = json.loads(text) if text else {}
    return value if isinstance(value, dict) else {}
