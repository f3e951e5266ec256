"""The ``aws-ecs`` provider: runs each attempt as one Amazon ECS task (Fargate or EC2).

Every attempt is ``RunTask`` of a task definition that already exists (config
``task_definition``, or the per-step option of that name): the image with the step code baked in
is part of the task definition because RunTask cannot override the image. The step's command,
environment, cpu and memory go into ``overrides``. Python steps run
``meridian-step --spec-env MERIDIAN_STEP_SPEC`` and print their outcome as a
``::meridian-outcome::`` line, which comes back through the container's ``awslogs`` stream
(``<prefix>/<container>/<task-id>``) in CloudWatch Logs. The task ARN is the handle's resource;
cancellation and timeouts are ``StopTask`` with a reason starting with ``meridian:``, which is
how ``wait()`` - also in a restarted agent - tells them from other stops.
See docs/providers/aws-ecs.md for config keys, options and the IAM policy.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar

from providers._aws_common import (
    AwsApiError,
    AwsConnection,
    call,
    make_client,
    read_result_marker,
)
from providers._aws_ecs_config import EcsConfig, validate_ecs_options
from providers._aws_ecs_state import (
    CANCEL_REASON,
    OUR_REASONS,
    PROVIDER_TYPE,
    TIMEOUT_REASON,
    EcsAttempt,
    TaskDefInfo,
    ecs_tag,
    ended_by_us,
    infra,
    outcome_from_exit,
    outcome_without_logs,
)
from providers._outcome import RESULT_MARKER
from providers.base import (
    Capabilities,
    ExecutionSpec,
    Handle,
    LogRecord,
    Outcome,
    Provider,
    ProviderError,
)

__all__ = ["EcsConfig", "EcsProvider"]

MAX_OVERRIDES_BYTES = 8192  # RunTask rejects larger overrides


class EcsProvider(Provider):
    """Runs steps as Amazon ECS tasks. Config: see ``EcsConfig``."""

    type: ClassVar[str] = PROVIDER_TYPE
    capabilities: ClassVar[Capabilities] = Capabilities(
        cancel=True, recover=True, streaming_logs=True, python_steps=True
    )
    options_schema: ClassVar[Mapping[str, Any]] = {
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

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        self.settings = EcsConfig.from_mapping(self.config)
        self._clients: dict[str, Any] = {}
        self._task_defs: dict[str, TaskDefInfo] = {}

    def validate_options(self, options: Mapping[str, Any]) -> None:
        super().validate_options(options)
        validate_ecs_options(options, self.settings)

    # ---- clients -------------------------------------------------------------------------

    async def _client(self, service: str, region: str | None = None) -> Any:
        s = self.settings
        region = region or s.region
        key = f"{service}:{region}"
        if key not in self._clients:
            conn = AwsConnection(
                region=region,
                endpoint_url=s.endpoint_url,
                access_key_id=s.access_key_id,
                secret_access_key=s.secret_access_key,
                session_token=s.session_token,
                profile=s.profile,
                verify=s.verify,
            )
            endpoint = s.logs_endpoint_url if service == "logs" else None
            self._clients[key] = await asyncio.to_thread(make_client, service, conn, endpoint)
        return self._clients[key]

    async def _ecs(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        return await call(await self._client("ecs"), operation, **kwargs)

    # ---- submit --------------------------------------------------------------------------

    async def _task_def(self, name: str) -> TaskDefInfo:
        """The step container and its awslogs settings: config first, else the definition."""
        s = self.settings
        if s.container_name and s.log_group and s.log_stream_prefix:
            return TaskDefInfo(s.container_name, s.log_group, s.log_stream_prefix, None)
        if name not in self._task_defs:
            raw = (await self._ecs("describe_task_definition", taskDefinition=name))[
                "taskDefinition"
            ]
            containers = raw.get("containerDefinitions") or []
            wanted = s.container_name or next(
                (c.get("name") for c in containers if c.get("essential", True)), None
            )
            found = next((c for c in containers if c.get("name") == wanted), None)
            if found is None:
                raise ProviderError(f"task definition {name!r} has no container {wanted!r}")
            logging = found.get("logConfiguration") or {}
            opts = logging.get("options") or {} if logging.get("logDriver") == "awslogs" else {}
            self._task_defs[name] = TaskDefInfo(
                container=str(wanted),
                log_group=s.log_group or opts.get("awslogs-group"),
                log_prefix=s.log_stream_prefix or opts.get("awslogs-stream-prefix"),
                log_region=opts.get("awslogs-region"),
            )
        return self._task_defs[name]

    def _environment(self, spec: ExecutionSpec, python_step: bool) -> dict[str, str]:
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
                    "bundle_dir": spec.options.get("code_dir") or self.settings.code_dir,
                    "step_key": spec.step_key,
                },
                separators=(",", ":"),
            )
        return env

    def _overrides(self, spec: ExecutionSpec, container: str, python_step: bool) -> dict[str, Any]:
        o = spec.options
        env = self._environment(spec, python_step)
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

    async def submit(self, spec: ExecutionSpec) -> Handle:
        self.validate_options(spec.options)
        s = self.settings
        task_definition = str(spec.options.get("task_definition") or s.task_definition)
        info = await self._task_def(task_definition)
        python_step = "command" not in spec.options
        if python_step and not (info.log_group and info.log_prefix):
            raise ProviderError(
                f"container {info.container!r} of task definition {task_definition!r} has no "
                "awslogs log configuration with a stream prefix, so a Python step's result "
                "cannot come back: configure awslogs or set log_group and log_stream_prefix"
            )
        request: dict[str, Any] = {
            "cluster": s.cluster,
            "taskDefinition": task_definition,
            "count": 1,
            "launchType": s.launch_type,
            "overrides": self._overrides(spec, info.container, python_step),
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
        started_at_ms = int(time.time() * 1000)
        response = await self._ecs("run_task", **request)
        failures = response.get("failures") or []
        tasks = response.get("tasks") or []
        if failures or not tasks:
            why = "; ".join(
                f"{f.get('arn', '')} {f.get('reason', '')} {f.get('detail', '')}".strip()
                for f in failures
            )
            raise ProviderError(f"ECS RunTask started no task: {why or 'no reason given'}")
        task_arn = str(tasks[0]["taskArn"])
        stream = None
        if info.log_group and info.log_prefix:
            stream = f"{info.log_prefix}/{info.container}/{task_arn.rsplit('/', 1)[-1]}"
        timeout = spec.timeout_s if spec.timeout_s and spec.timeout_s > 0 else None
        data = {
            "cluster": s.cluster,
            "container": info.container,
            "python_step": python_step,
            "timeout_s": timeout,
            "started_at_ms": started_at_ms,
            "log_group": info.log_group,
            "log_stream": stream,
            "log_region": info.log_region,
        }
        return Handle(provider=self.type, resource_id=task_arn, data=data)

    # ---- wait / poll ---------------------------------------------------------------------

    async def _describe(self, attempt: EcsAttempt) -> dict[str, Any] | None:
        """The task as ECS reports it, or None when ECS no longer knows it (MISSING)."""
        response = await self._ecs(
            "describe_tasks", cluster=attempt.cluster, tasks=[attempt.task_arn]
        )
        return next(iter(response.get("tasks") or []), None)

    async def _check(self, attempt: EcsAttempt) -> tuple[Outcome | None, Mapping[str, Any]]:
        """One look at the task: its outcome once STOPPED (else None), and the task itself.

        Enforces the timeout too: an overdue task is stopped with our reason.
        """
        try:
            task = await self._describe(attempt)
            if task is None:
                message = (
                    f"ECS task {attempt.task_arn} is unknown to cluster {attempt.cluster!r} "
                    "(ECS forgets stopped tasks after about an hour)"
                )
                return infra(message), {}
            if task.get("lastStatus") == "STOPPED":
                return await self._conclude(attempt, task), task
            if attempt.overdue() and task.get("desiredStatus") != "STOPPED":
                await self._stop(attempt, f"{TIMEOUT_REASON} after {attempt.timeout_s:g} s")
            return None, task
        except AwsApiError as exc:
            return infra(str(exc)), {}

    async def poll(self, handle: Handle) -> Outcome | None:
        return (await self._check(EcsAttempt.of(handle)))[0]

    async def wait(self, handle: Handle) -> Outcome:
        attempt = EcsAttempt.of(handle)
        stop_seen: float | None = None
        while True:
            outcome, task = await self._check(attempt)
            if outcome is not None:
                return outcome
            reason = str(task.get("stoppedReason") or "")
            if reason.startswith(OUR_REASONS) and stop_seen is None:
                stop_seen = time.monotonic()
            if stop_seen is not None and time.monotonic() - stop_seen > self.settings.kill_grace_s:
                # We asked ECS to stop it long ago: report that, not a task stuck in STOPPING.
                return ended_by_us(attempt, reason, None) or infra(reason)
            await asyncio.sleep(self.settings.poll_interval_s)

    async def _conclude(self, attempt: EcsAttempt, task: Mapping[str, Any]) -> Outcome:
        early = outcome_without_logs(attempt, task)
        if early is not None:
            return early
        return outcome_from_exit(attempt, task, await self._read_marker(attempt))

    async def _read_marker(self, attempt: EcsAttempt) -> Outcome | None:
        if not (attempt.log_group and attempt.log_stream):
            return None
        logs = await self._client("logs", attempt.log_region)
        # awslogs delivers with a delay: a Python step's last line may land after STOPPED.
        deadline = time.monotonic() + (self.settings.log_settle_s if attempt.python_step else 0)
        while True:
            try:
                outcome = await read_result_marker(logs, attempt.log_group, attempt.log_stream)
            except AwsApiError as exc:
                return infra(f"the step's outcome could not be read: {exc}")
            if outcome is not None or time.monotonic() >= deadline:
                return outcome
            await asyncio.sleep(min(1.0, self.settings.poll_interval_s))

    # ---- cancel / recover / logs ---------------------------------------------------------

    async def _stop(self, attempt: EcsAttempt, reason: str) -> None:
        await self._ecs("stop_task", cluster=attempt.cluster, task=attempt.task_arn, reason=reason)

    async def cancel(self, handle: Handle, grace_s: float) -> None:
        # ECS itself sends SIGTERM and SIGKILLs after the container's stopTimeout (task
        # definition); grace_s cannot be passed per StopTask.
        attempt = EcsAttempt.of(handle)
        task = await self._describe(attempt)
        if task is None or task.get("desiredStatus") == "STOPPED":
            return  # gone, ending on its own, or already stopped: nothing to cancel (idempotent)
        await self._stop(attempt, f"{CANCEL_REASON} by the Meridian agent")

    async def recover(self, handle: Handle) -> bool:
        attempt = EcsAttempt.of(handle)
        return await self._describe(attempt) is not None

    async def logs(self, handle: Handle) -> AsyncIterator[LogRecord]:
        attempt = EcsAttempt.of(handle)
        if not (attempt.log_group and attempt.log_stream):
            return
        logs = await self._client("logs", attempt.log_region)
        token: str | None = None
        settle_until: float | None = None
        saw_marker = False
        while True:
            # Decide "ended" before reading so the last read covers everything delivered.
            try:
                task = await self._describe(attempt)
                ended = task is None or task.get("lastStatus") == "STOPPED"
            except AwsApiError:
                ended = False  # keep following; wait() reports an error that lasts
            if ended and settle_until is None:
                settle_until = time.monotonic() + self.settings.log_settle_s
            kwargs: dict[str, Any] = {
                "logGroupName": attempt.log_group,
                "logStreamName": attempt.log_stream,
                "startFromHead": True,
            }
            if token:
                kwargs["nextToken"] = token
            try:
                page = await call(logs, "get_log_events", **kwargs)
            except AwsApiError as exc:
                if exc.code != "ResourceNotFoundException":  # not yet created: keep waiting
                    raise
                page = {}
            events = page.get("events") or []
            token = page.get("nextForwardToken") or token
            for event in events:
                text = str(event.get("message", "")).rstrip("\n")
                saw_marker = saw_marker or RESULT_MARKER in text
                yield LogRecord("stdout", text, int(event.get("timestamp", 0)))
            if events:
                continue
            settled = saw_marker or not attempt.python_step
            if settle_until is not None and (settled or time.monotonic() >= settle_until):
                return
            await asyncio.sleep(self.settings.poll_interval_s)

    async def close(self) -> None:
        # Running tasks are deliberately left alone: a restarted agent re-attaches to them.
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await asyncio.to_thread(client.close)
