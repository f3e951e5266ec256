"""The ``gcp-cloud-run`` provider: runs each attempt as one execution of a Cloud Run job.

The job (image, service account, CPU/memory, VPC, ``max_retries``) is created beforehand, by
Terraform or ``gcloud run jobs create``; an attempt is ``RunJob`` with per-execution overrides:
the container's args (``meridian-step --spec-env MERIDIAN_STEP_SPEC`` for Python steps, the
``command`` option otherwise), env (Meridian ids, the step spec, option ``env``), task count and
task timeout. The execution's full resource name is the handle's ``resource_id``; ``wait`` polls
``GetExecution`` (and ``ListTasks`` for exit codes); ``cancel`` is ``CancelExecution``.

Cloud Run keeps no output: stdout/stderr go to Cloud Logging, so results and logs come back
through a ``LogSource`` (``logs`` in this package). The async ``google-cloud-run`` clients
(``client``) run on a gRPC channel per event loop, because a ``grpc.aio`` channel belongs to the
loop it was made in and an agent (or a test) may run the provider in more than one.

RunJob takes no labels: executions carry the job's labels, and the Meridian ids travel in the
env (``MERIDIAN_ATTEMPT_ID``, ``MERIDIAN_FLOW_RUN_ID``, ``MERIDIAN_STEP_KEY``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import math
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar

from providers.base import (
    Capabilities,
    ErrorInfo,
    ExecutionSpec,
    Handle,
    LogRecord,
    Outcome,
    Provider,
    ProviderError,
    ProviderOptionsError,
)
from providers.gcp_cloud_run.client import Clients, Sdk, load_sdk, make_clients
from providers.gcp_cloud_run.config import (
    OPTIONS_SCHEMA,
    SPEC_ENV,
    STEP_ARGS,
    CloudRunConfig,
    validate_options,
)
from providers.gcp_cloud_run.logs import CloudLoggingSource, LogSource
from providers.gcp_cloud_run.state import (
    TYPE,
    Attempt,
    cancelled,
    condition_message,
    execution_state,
    infrastructure,
    timed_out,
)
from providers.shared.logfollow import follow_pages
from providers.shared.outcome import RESULT_MARKER, parse_result_marker

_NAME_WAIT_S = 60.0  # how long submit waits for the RunJob operation to name its execution


class CloudRunProvider(Provider):
    """Runs steps as Cloud Run job executions; see ``docs/providers/gcp-cloud-run.md``."""

    type: ClassVar[str] = TYPE
    capabilities: ClassVar[Capabilities] = Capabilities(
        cancel=True, recover=True, streaming_logs=True, python_steps=True
    )
    options_schema: ClassVar[Mapping[str, Any]] = OPTIONS_SCHEMA

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        self.settings = CloudRunConfig.from_mapping(self.config)
        self._clients: dict[asyncio.AbstractEventLoop, Clients] = {}
        self._log_source: LogSource | None = self.settings.log_source
        # Why this instance ended an execution; a re-attached instance infers it (ran_out()).
        self._ended_by: dict[str, str] = {}

    # ---- plumbing ------------------------------------------------------------------------

    def _api(self) -> tuple[Sdk, Clients]:
        sdk = load_sdk()
        loop = asyncio.get_running_loop()
        for old in [old for old in self._clients if old.is_closed()]:
            del self._clients[old]  # its channel died with its loop
        if loop not in self._clients:
            self._clients[loop] = make_clients(self.settings, sdk.run_v2)
        return sdk, self._clients[loop]

    def _logs(self) -> LogSource:
        if self._log_source is None:
            s = self.settings
            endpoint = s.logging_endpoint or "https://logging.googleapis.com"
            self._log_source = CloudLoggingSource(s.credentials, endpoint)
        return self._log_source

    # ---- verbs ---------------------------------------------------------------------------

    def validate_options(self, options: Mapping[str, Any]) -> None:
        if "image" in options:
            raise ProviderOptionsError(
                "option 'image': a Cloud Run execution cannot change its job's image; "
                "create one job per image and choose it with option 'job'"
            )
        super().validate_options(options)
        validate_options(options, self.settings.job)

    async def submit(self, spec: ExecutionSpec) -> Handle:
        self.validate_options(spec.options)
        sdk, clients = self._api()
        run_v2 = sdk.run_v2
        options, s = spec.options, self.settings
        job = s.job_name(str(options.get("job", s.job)))
        python = "command" not in options
        env = dict(options.get("env", {}))
        env.update(spec.env)
        env.update(
            MERIDIAN_ATTEMPT_ID=spec.attempt_id,
            MERIDIAN_FLOW_RUN_ID=spec.flow_run_id,
            MERIDIAN_STEP_KEY=spec.step_key,
        )
        if python:
            self._logs()  # fail before starting anything when results could not be read back
            env[SPEC_ENV] = json.dumps(
                {
                    "module": spec.module,
                    "function": spec.function,
                    "inputs_json": spec.inputs_json,
                    "bundle_dir": str(options.get("code_dir", s.code_dir)),
                    "step_key": spec.step_key,
                    **spec.context_fields(),
                    **spec.result_fields(),
                }
            )
        timeout = spec.timeout_s if spec.timeout_s and spec.timeout_s > 0 else None
        overrides = run_v2.RunJobRequest.Overrides(
            container_overrides=[
                run_v2.RunJobRequest.Overrides.ContainerOverride(
                    name=s.container_name or "",
                    args=list(STEP_ARGS) if python else list(options["command"]),
                    env=[run_v2.EnvVar(name=k, value=v) for k, v in sorted(env.items())],
                )
            ],
            task_count=int(options.get("task_count", 1)),
        )
        if timeout is not None:  # Cloud Run enforces it per task too; wait() enforces it here
            overrides.timeout = dt.timedelta(seconds=math.ceil(timeout))
        submitted_at_ms = int(time.time() * 1000)
        try:
            operation = await clients.jobs.run_job(
                request=run_v2.RunJobRequest(name=job, overrides=overrides)
            )
            execution = await self._execution_name(operation)
        except sdk.errors.GoogleAPICallError as exc:
            raise ProviderError(f"Cloud Run RunJob {job} failed: {exc}") from exc
        data = {
            "job": job,
            "operation": operation.operation.name,
            "python": python,
            "timeout_s": timeout,
            "submitted_at_ms": submitted_at_ms,
        }
        return Handle(provider=TYPE, resource_id=execution, data=data)

    async def _execution_name(self, operation: Any) -> str:
        """The execution a RunJob operation started, from its metadata (or its response)."""
        deadline = time.monotonic() + _NAME_WAIT_S
        while True:
            metadata = operation.metadata
            if metadata is not None and metadata.name:
                return str(metadata.name)
            if operation.operation.done:
                if operation.operation.HasField("error"):
                    raise ProviderError(f"Cloud Run RunJob failed: {operation.operation.error}")
                return str((await operation.result()).name)
            if time.monotonic() >= deadline:
                raise ProviderError(
                    f"Cloud Run operation {operation.operation.name} named no execution "
                    f"within {_NAME_WAIT_S:g} s"
                )
            await asyncio.sleep(min(self.settings.poll_interval_s, 1.0))
            await operation.done()  # GetOperation: refreshes metadata

    async def wait(self, handle: Handle) -> Outcome:
        attempt = Attempt.of(handle)
        sdk, clients = self._api()
        deadline = attempt.deadline()
        try:
            while True:
                execution = await clients.executions.get_execution(name=attempt.execution)
                if "completion_time" in execution:
                    return await self._conclude(attempt, clients, execution)
                if deadline is not None and time.monotonic() >= deadline:
                    return await self._time_out(attempt, clients)
                pause = self.settings.poll_interval_s
                if deadline is not None:
                    pause = max(0.0, min(pause, deadline - time.monotonic()))
                await asyncio.sleep(pause)
        except sdk.errors.GoogleAPICallError as exc:
            return infrastructure(f"Cloud Run execution {attempt.execution}: {exc}")
        except ProviderError as exc:  # CancelExecution failed after the timeout
            return infrastructure(str(exc))

    async def poll(self, handle: Handle) -> Outcome | None:
        attempt = Attempt.of(handle)
        sdk, clients = self._api()
        try:
            execution = await clients.executions.get_execution(name=attempt.execution)
        except sdk.errors.GoogleAPICallError as exc:
            return infrastructure(f"Cloud Run execution {attempt.execution}: {exc}")
        deadline = attempt.deadline()
        if "completion_time" in execution or (
            deadline is not None and time.monotonic() >= deadline
        ):
            return await self.wait(handle)
        return None

    async def _time_out(self, attempt: Attempt, clients: Clients) -> Outcome:
        self._ended_by.setdefault(attempt.execution, "timed_out")
        await self._cancel(attempt.execution, clients)
        # Give Cloud Run kill_grace_s to stop the tasks, so the outcome means "stopped".
        give_up = time.monotonic() + self.settings.kill_grace_s
        while time.monotonic() < give_up:
            execution = await clients.executions.get_execution(name=attempt.execution)
            if "completion_time" in execution:
                break
            await asyncio.sleep(self.settings.poll_interval_s)
        return timed_out(attempt, "was cancelled")

    async def _conclude(self, attempt: Attempt, clients: Clients, execution: Any) -> Outcome:
        state = execution_state(execution)
        ended_by = self._ended_by.get(attempt.execution)
        if state == "cancelled":
            if ended_by == "timed_out" or (ended_by is None and attempt.ran_out(execution)):
                return timed_out(attempt, "was cancelled")
            return cancelled()
        exit_code = 0 if state == "succeeded" else await self._exit_code(clients, attempt.execution)
        if attempt.python:
            try:
                outcome = await self._read_marker(attempt.execution)
            except Exception as exc:  # any log reader failure: say so, do not guess a result
                return infrastructure(f"cannot read the output of {attempt.execution}: {exc}")
            if outcome is not None:
                if exit_code is None:
                    exit_code = 0 if outcome.state == "succeeded" else 1
                return dataclasses.replace(outcome, exit_code=exit_code)
            if state == "succeeded":
                return infrastructure(
                    f"Cloud Run execution {attempt.execution} succeeded but its "
                    f"'{RESULT_MARKER}' line did not reach the log source within "
                    f"{self.settings.log_settle_s:g} s",
                    exit_code,
                )
        elif state == "succeeded":
            return Outcome(state="succeeded", exit_code=0, result_json="null")
        if attempt.ran_out(execution):
            return timed_out(attempt, "Cloud Run ended its task", exit_code)
        why = condition_message(execution) or "no reason given"
        if exit_code is None:
            return infrastructure(f"Cloud Run execution {attempt.execution} failed: {why}")
        message = f"Cloud Run execution {attempt.execution} exited with code {exit_code}: {why}"
        detail = ErrorInfo("transient", "providers.base.ProviderError", message)
        return Outcome(state="failed", exit_code=exit_code, error=detail)

    async def _exit_code(self, clients: Clients, execution: str) -> int | None:
        """The exit code of the lowest-index failed task, when Cloud Run reports one."""
        sdk = load_sdk()
        failed: list[tuple[int, int]] = []
        try:
            async for task in await clients.tasks.list_tasks(parent=execution):
                if "last_attempt_result" in task and task.last_attempt_result.exit_code != 0:
                    failed.append((task.index, task.last_attempt_result.exit_code))
        except sdk.errors.GoogleAPICallError:
            return None  # the exit code is a detail; the execution's state already says failed
        return min(failed)[1] if failed else None

    async def _read_marker(self, execution: str) -> Outcome | None:
        """The step's outcome line, waiting up to log_settle_s for Cloud Logging to catch up."""
        source, cursor, lines = self._logs(), None, []
        give_up = time.monotonic() + self.settings.log_settle_s
        while True:
            for entry in await source.read(execution, cursor):
                cursor = entry.cursor
                if entry.stream == "stdout":
                    lines.append(entry.text)
            outcome = parse_result_marker("\n".join(lines))
            if outcome is not None or time.monotonic() >= give_up:
                return outcome
            await asyncio.sleep(min(self.settings.poll_interval_s, 1.0))

    async def cancel(self, handle: Handle, grace_s: float) -> None:
        # Cloud Run has no grace knob: tasks get SIGTERM, then SIGKILL 10 s later.
        attempt = Attempt.of(handle)
        _, clients = self._api()
        self._ended_by.setdefault(attempt.execution, "cancelled")
        await self._cancel(attempt.execution, clients)

    async def _cancel(self, execution: str, clients: Clients) -> None:
        errors = load_sdk().errors
        try:
            await clients.executions.cancel_execution(name=execution)
        except (errors.FailedPrecondition, errors.NotFound):
            pass  # already ended or deleted: cancel is idempotent
        except errors.GoogleAPICallError as exc:
            raise ProviderError(f"Cloud Run CancelExecution {execution} failed: {exc}") from exc

    async def recover(self, handle: Handle) -> bool:
        attempt = Attempt.of(handle)
        sdk, clients = self._api()
        try:
            await clients.executions.get_execution(name=attempt.execution)
        except sdk.errors.NotFound:
            return False
        except sdk.errors.GoogleAPICallError as exc:
            raise ProviderError(f"Cloud Run GetExecution {attempt.execution}: {exc}") from exc
        return True

    async def logs(self, handle: Handle) -> AsyncIterator[LogRecord]:
        attempt = Attempt.of(handle)
        sdk, clients = self._api()
        source, cursor = self._logs(), None
        saw_marker = False

        async def ended() -> bool:
            try:
                execution = await clients.executions.get_execution(name=attempt.execution)
            except sdk.errors.GoogleAPICallError:
                return True  # gone or unreadable: wait() reports the error
            return "completion_time" in execution

        async def read() -> list[LogRecord]:
            nonlocal cursor, saw_marker
            records = []
            for entry in await source.read(attempt.execution, cursor):
                cursor = entry.cursor
                saw_marker = saw_marker or entry.text.startswith(RESULT_MARKER)
                records.append(LogRecord(entry.stream, entry.text, entry.at_unix_ms))
            return records

        async for record in follow_pages(
            read,
            ended,
            lambda: saw_marker,
            poll_interval_s=min(self.settings.poll_interval_s, 1.0),
            settle_s=self.settings.log_settle_s,
        ):
            yield record

    async def close(self) -> None:
        # Executions keep running: a restarted agent re-attaches to them.
        clients, self._clients = self._clients, {}
        for loop, each in clients.items():
            if loop is asyncio.get_running_loop():  # others closed with their loop
                await each.close()
