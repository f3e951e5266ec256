"""The ECS ``RunTask`` request of one attempt, built from an existing task definition.

RunTask cannot change a task definition's image, so an attempt is the definition plus
``overrides``: the step's command and environment, cpu, memory and gpu. Pure functions of the
spec and config, testable without AWS; the provider does the API calls.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from providers.aws_ecs.config import EcsConfig
from providers.aws_ecs.state import TaskDefInfo, ecs_tag
from providers.base import ExecutionSpec, ProviderError

MAX_OVERRIDES_BYTES = 8192  # RunTask rejects larger overrides

OPTIONS_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "properties": {
        "command": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "env": {"type": "object", "additionalProperties": {"type": "string"}},
        "cpu": {"type": "integer", "minimum": 1, "description": "task CPU units"},
        "memory": {"type": "integer", "minimum": 1, "description": "MiB"},
        "gpu": {"type": "integer", "minimum": 1, "description": "EC2 launch type only"},
        "code_dir": {"type": "string", "description": "the code's path in the image"},
        "task_definition": {"type": "string", "minLength": 1},
    },
    "additionalProperties": False,
}


def task_def_info(name: str, raw: Mapping[str, Any], settings: EcsConfig) -> TaskDefInfo:
    """The step container of task definition ``name`` (as DescribeTaskDefinition returns it)
    and its awslogs settings; config values win over the definition's."""
    s = settings
    containers = raw.get("containerDefinitions") or []
    wanted = s.container_name or next(
        (c.get("name") for c in containers if c.get("essential", True)), None
    )
    found = next((c for c in containers if c.get("name") == wanted), None)
    if found is None:
        raise ProviderError(f"task definition {name!r} has no container {wanted!r}")
    logging = found.get("logConfiguration") or {}
    opts = logging.get("options") or {} if logging.get("logDriver") == "awslogs" else {}
    return TaskDefInfo(
        container=str(wanted),
        log_group=s.log_group or opts.get("awslogs-group"),
        log_prefix=s.log_stream_prefix or opts.get("awslogs-stream-prefix"),
        log_region=opts.get("awslogs-region"),
    )


def environment(spec: ExecutionSpec, python_step: bool, default_code_dir: str) -> dict[str, str]:
    env = dict(spec.options.get("env") or {})
    env.update(spec.env)
    env["MERIDIAN_ATTEMPT_ID"] = spec.attempt_id
    env["MERIDIAN_FLOW_RUN_ID"] = spec.flow_run_id
    env["MERIDIAN_STEP_RUN_ID"] = spec.step_run_id
    env["MERIDIAN_STEP_KEY"] = spec.step_key
    if python_step:
        env["MERIDIAN_STEP_SPEC"] = json.dumps(
            {
                "module": spec.module,
                "function": spec.function,
                "inputs_json": spec.inputs_json,
                "bundle_dir": spec.options.get("code_dir") or default_code_dir,
                "step_key": spec.step_key,
                **spec.context_fields(),
                **spec.result_fields(),
            },
            separators=(",", ":"),
        )
    return env


def overrides(
    spec: ExecutionSpec, container: str, python_step: bool, default_code_dir: str
) -> dict[str, Any]:
    o = spec.options
    env = environment(spec, python_step, default_code_dir)
    command = list(o["command"]) if "command" in o else ["meridian-step", "--spec-env"]
    if python_step:
        command.append("MERIDIAN_STEP_SPEC")
    ours: dict[str, Any] = {
        "name": container,
        "command": command,
        "environment": [{"name": k, "value": v} for k, v in sorted(env.items())],
    }
    overrides: dict[str, Any] = {"containerOverrides": [ours]}
    if "cpu" in o:
        overrides["cpu"] = str(o["cpu"])
    if "memory" in o:  # task size and our container's hard limit, so the step can use it
        overrides["memory"] = str(o["memory"])
        ours["memory"] = o["memory"]
    if "gpu" in o:
        ours["resourceRequirements"] = [{"type": "GPU", "value": str(o["gpu"])}]
    size = len(json.dumps(overrides, separators=(",", ":")).encode())
    if size > MAX_OVERRIDES_BYTES:
        raise ProviderError(
            f"the ECS overrides of step {spec.step_key!r} are {size} bytes; RunTask accepts "
            f"{MAX_OVERRIDES_BYTES}: pass large inputs by reference (e.g. an S3 URI)"
        )
    return overrides


def run_task_request(
    spec: ExecutionSpec, settings: EcsConfig, task_definition: str, info: TaskDefInfo
) -> dict[str, Any]:
    """The keyword arguments of ``RunTask`` for one attempt."""
    s = settings
    python_step = "command" not in spec.options
    request: dict[str, Any] = {
        "cluster": s.cluster,
        "taskDefinition": task_definition,
        "count": 1,
        "launchType": s.launch_type,
        "overrides": overrides(spec, info.container, python_step, s.code_dir),
        "startedBy": f"meridian-{spec.attempt_id}"[:36],
        # RunTask is idempotent per token: an agent retrying a submit gets the same task.
        "clientToken": spec.attempt_id[:64],
        "tags": [
            ecs_tag("meridian:flow-run-id", spec.flow_run_id),
            ecs_tag("meridian:step-run-id", spec.step_run_id),
            ecs_tag("meridian:step-key", spec.step_key),
            ecs_tag("meridian:attempt-id", spec.attempt_id),
        ],
    }
    if s.platform_version:
        request["platformVersion"] = s.platform_version
    if s.subnets:
        request["networkConfiguration"] = {
            "awsvpcConfiguration": {
                "subnets": list(s.subnets),
                "securityGroups": list(s.security_groups),
                "assignPublicIp": "ENABLED" if s.assign_public_ip else "DISABLED",
            }
        }
    return request
