"""The deployment RPCs of ControlService (a mixin it inherits): decode and validate the
request, run the use case, encode the answer. Roles are in ``auth/api_tokens.py``: viewers
read, operators create, trigger and pause, admins delete; a run's runner token may trigger
a deployment only as a subflow of its own run (``parent_run_id``, checked by ``authz``)."""

from __future__ import annotations

import json
from typing import Any

import grpc

from control_plane.api import views
from control_plane.api.authz import CURRENT_PRINCIPAL
from control_plane.api.errors import rpc
from control_plane.api.services import Services
from control_plane.orchestration import runners
from control_plane.orchestration.deployment_specs import (
    DEFAULT_MAX_CATCH_UP_RUNS,
    DeploymentSpec,
    OutcomeTrigger,
    ScheduleSpec,
)
from control_plane.usecases.deployment_views import (
    DeploymentView,
    get_deployment,
    list_deployments,
    list_versions,
)
from control_plane.usecases.deployments import (
    TriggerSource,
    create_deployment,
    delete_deployment,
    set_paused,
)
from control_plane.usecases.subflows import trigger_child_deployment
from meridian.core import jsondepth
from meridian.core.convert import ms_from_time
from meridian.core.errors import ValidationError
from protos.meridian.v1 import control_pb2

MAX_JSON_BYTES = 1024 * 1024
MAX_REPEATED = 100


class DeploymentsApi:
    _s: Services

    @rpc
    async def CreateDeployment(
        self, request: control_pb2.CreateDeploymentRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.DeploymentInfo:
        spec = spec_from_proto(request.spec)
        deployment, _ = await self._s.store.transact(create_deployment, spec)
        return await self._info(deployment.name, 0)

    @rpc
    async def ListDeployments(
        self, request: control_pb2.ListDeploymentsRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.ListDeploymentsResponse:
        found = await self._s.store.run(list_deployments, self._s.store.clock())
        return control_pb2.ListDeploymentsResponse(deployments=[info_to_proto(v) for v in found])

    @rpc
    async def GetDeployment(
        self, request: control_pb2.GetDeploymentRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.DeploymentInfo:
        return await self._info(request.name, request.version)

    @rpc
    async def ListDeploymentVersions(
        self, request: control_pb2.GetDeploymentRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.ListDeploymentVersionsResponse:
        found = await self._s.store.run(list_versions, request.name, self._s.store.clock())
        return control_pb2.ListDeploymentVersionsResponse(
            versions=[info_to_proto(v) for v in found]
        )

    @rpc
    async def SetDeploymentPaused(
        self, request: control_pb2.SetDeploymentPausedRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.DeploymentInfo:
        await self._s.store.transact(set_paused, request.name, request.paused, request.schedule_id)
        return await self._info(request.name, 0)

    @rpc
    async def DeleteDeployment(
        self, request: control_pb2.DeleteDeploymentRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.DeploymentInfo:
        info = await self._info(request.name, 0)
        await self._s.store.transact(delete_deployment, request.name)
        return info

    @rpc
    async def TriggerDeployment(
        self, request: control_pb2.TriggerDeploymentRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.TriggerDeploymentResponse:
        params = _json_object(request.parameters_json, "parameters_json")
        parent = None
        if request.parent_run_id or request.parent_key:
            parent = (request.parent_run_id, request.parent_key)
        principal = CURRENT_PRINCIPAL.get()
        actor = principal.actor if principal is not None else ""
        source = TriggerSource("subflow" if parent else "api", actor)
        outcome = await self._s.store.transact(
            trigger_child_deployment,
            request.name,
            params,
            caller_epoch=principal.runner_epoch if principal is not None else None,
            source=source,
            idempotency_key=request.idempotency_key or None,
            parent=parent,
        )
        return control_pb2.TriggerDeploymentResponse(
            flow_run_id=outcome.flow_run_id or "",
            existing=outcome.existing,
            state=outcome.state,
            message=outcome.message,
        )

    async def _info(self, name: str, version: int) -> control_pb2.DeploymentInfo:
        view = await self._s.store.run(get_deployment, name, version, self._s.store.clock())
        return info_to_proto(view)


# ---- decoding -------------------------------------------------------------------------------


def spec_from_proto(spec: control_pb2.DeploymentSpec) -> DeploymentSpec:
    if len(spec.schedules) > MAX_REPEATED or len(spec.triggers) > MAX_REPEATED:
        raise ValidationError(f"at most {MAX_REPEATED} schedules and triggers")
    return DeploymentSpec(
        name=spec.name,
        flow_name=spec.flow_name,
        entrypoint=spec.entrypoint,
        bundle_sha256=spec.bundle_sha256,
        parameter_schema=_json_object(spec.parameter_schema_json, "parameter_schema_json"),
        description=spec.description,
        tags=tuple(spec.tags[: MAX_REPEATED + 1]),
        runner_target=spec.runner_target,
        parameters=_json_object(spec.parameters_json, "parameters_json"),
        schedules=tuple(_schedule(s) for s in spec.schedules),
        concurrency=spec.concurrency,
        concurrency_overflow=spec.concurrency_overflow or "queue",
        on_runner_lost=spec.on_runner_lost or "resume",
        max_runner_resumes=(
            spec.max_runner_resumes
            if spec.HasField("max_runner_resumes")
            else runners.DEFAULT_MAX_RUNNER_RESUMES  # 0 is a choice: fail when lost
        ),
        triggers=tuple(
            OutcomeTrigger(
                t.upstream_deployment,
                tuple(t.states[:10]),
                t.run_id_parameter,
                t.result_parameter,
            )
            for t in spec.triggers
        ),
        flow_concurrency=tuple(spec.flow_concurrency[: MAX_REPEATED + 1]),
    )


def _schedule(s: control_pb2.ScheduleSpec) -> ScheduleSpec:
    return ScheduleSpec(
        schedule_id=s.schedule_id,
        definition=_json_object(s.definition_json, "schedule definition_json"),
        parameters=_json_object(s.parameters_json, "schedule parameters_json"),
        catch_up=s.catch_up or "skip",
        catch_up_window_s=s.catch_up_window_s,
        max_catch_up_runs=(
            s.max_catch_up_runs
            if s.HasField("max_catch_up_runs")
            else DEFAULT_MAX_CATCH_UP_RUNS  # an explicit 0 is refused by the spec's check
        ),
        jitter_s=s.jitter_s,
        paused=s.paused,
    )


def _json_object(text: str, what: str) -> dict[str, Any]:
    if not text:
        return {}
    if len(text) > MAX_JSON_BYTES:
        raise ValidationError(f"{what} must be at most {MAX_JSON_BYTES} bytes")
    try:
        value = jsondepth.loads(text, what)
    except ValueError:
        raise ValidationError(f"{what} is not valid JSON") from None
    if not isinstance(value, dict):
        raise ValidationError(f"{what} must be a JSON object")
    return value


# ---- encoding -------------------------------------------------------------------------------


def info_to_proto(view: DeploymentView) -> control_pb2.DeploymentInfo:
    return control_pb2.DeploymentInfo(
        deployment_id=view.deployment_id,
        spec=_spec_to_proto(view),
        version=view.version,
        paused=view.paused,
        created_at_unix_ms=ms_from_time(view.created_at),
        created_by=view.created_by,
        active_runs=view.active_runs,
        queued_runs=view.queued_runs,
        recent_runs=[views.run_summary(*row) for row in view.recent_runs],
    )


def _spec_to_proto(view: DeploymentView) -> control_pb2.DeploymentSpec:
    spec = view.spec
    return control_pb2.DeploymentSpec(
        name=spec.name,
        flow_name=spec.flow_name,
        entrypoint=spec.entrypoint,
        bundle_sha256=spec.bundle_sha256,
        description=spec.description,
        tags=list(spec.tags),
        runner_target=spec.runner_target,
        parameters_json=json.dumps(spec.parameters, sort_keys=True),
        parameter_schema_json=json.dumps(spec.parameter_schema),
        schedules=[_schedule_to_proto(view, s) for s in spec.schedules],
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


def _schedule_to_proto(view: DeploymentView, s: ScheduleSpec) -> control_pb2.ScheduleSpec:
    state = view.schedules.get(s.schedule_id)
    return control_pb2.ScheduleSpec(
        schedule_id=s.schedule_id,
        definition_json=json.dumps(s.definition),
        parameters_json=json.dumps(s.parameters, sort_keys=True),
        catch_up=s.catch_up,
        catch_up_window_s=s.catch_up_window_s,
        max_catch_up_runs=s.max_catch_up_runs,
        jitter_s=s.jitter_s,
        paused=state.paused if state is not None else s.paused,
        description=state.description if state is not None else "",
        next_fire_unix_ms=[ms_from_time(t) for t in state.next_fires] if state else [],
    )
