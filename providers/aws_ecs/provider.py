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
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar

from providers.aws_ecs.client import AwsApiError, AwsConnection, call, make_client
from providers.aws_ecs.config import EcsConfig, validate_ecs_options
from providers.aws_ecs.logs import EventPages, read_result_marker
from providers.aws_ecs.state import (
    CANCEL_REASON,
    OUR_REASONS,
    PROVIDER_TYPE,
    TIMEOUT_REASON,
    EcsAttempt,
    TaskDefInfo,
    ended_by_us,
    infra,
    outcome_from_exit,
    outcome_without_logs,
)
from providers.aws_ecs.task import OPTIONS_SCHEMA, run_task_request, task_def_info
from providers.base import (
    Capabilities,
    ExecutionSpec,
    Handle,
    LogRecord,
    Outcome,
    Provider,
    ProviderError,
)
from providers.shared.logfollow import follow_pages

__all__ = ["EcsConfig", "EcsProvider"]


class EcsProvider(Provider):
    """Runs steps as Amazon ECS tasks. Config: see ``EcsConfig``."""

    type: ClassVar[str] = PROVIDER_TYPE
    capabilities: ClassVar[Capabilities] = Capabilities(
        cancel=True, recover=True, streaming_logs=True, python_steps=True
    )
    options_schema: ClassVar[Mapping[str, Any]] = OPTIONS_SCHEMA

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
            raw = await self._ecs("describe_task_definition", taskDefinition=name)
            self._task_defs[name] = task_def_info(name, raw["taskDefinition"], s)
        return self._task_defs[name]

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
        request = run_task_request(spec, s, task_definition, info)
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
        pages = EventPages(
            await self._client("logs", attempt.log_region), attempt.log_group, attempt.log_stream
        )

        async def ended() -> bool:
            try:
                task = await self._describe(attempt)
            except AwsApiError:
                return False  # keep following; wait() reports an error that lasts
            return task is None or task.get("lastStatus") == "STOPPED"

        async for record in follow_pages(
            pages.read,
            ended,
            # A command step prints no marker: once stopped, an empty read means complete.
            lambda: pages.saw_marker or not attempt.python_step,
            poll_interval_s=self.settings.poll_interval_s,
            settle_s=self.settings.log_settle_s,
        ):
            yield record

    async def close(self) -> None:
        # Running tasks are deliberately left alone: a restarted agent re-attaches to them.
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await asyncio.to_thread(client.close)
