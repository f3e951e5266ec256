"""The ``ray`` provider: runs each attempt as a Ray job through the Job Submission API.

One attempt is one job with the deterministic submission id ``meridian-<attempt_id>`` (so a
retried submit finds the job it already made), the run/step/attempt ids as job metadata and in
its env. The step runs as ``python -m meridian.stepexec`` under ``providers.ray.entry``, which
keeps stdout and stderr apart in Ray's single job log. By default the cluster must see this
machine's files (a local or same-host cluster, or a shared filesystem): it reads ``spec.json``
from the attempt's work dir and writes ``outcome.json`` there. With the option
``upload_bundle`` the bundle is uploaded as the job's ``working_dir`` and the outcome comes back
as the result marker in the job logs. Why an attempt was stopped (cancel or timeout) is kept in
the work dir, which is always local to the agent, so it survives an agent restart.

``JobSubmissionClient`` is blocking (``requests``): every call runs in a thread, bounded by
``request_timeout_s``; any failure of a call becomes a ``ProviderError`` with Ray's message.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, ClassVar, Literal

from providers.base import (
    Capabilities,
    ErrorInfo,
    ExecutionSpec,
    Handle,
    LogRecord,
    Outcome,
    Provider,
    ProviderError,
)
from providers.ray.config import OPTIONS_SCHEMA, RayConfig, job_request, validate_options
from providers.ray.entry import STDERR_TAG
from providers.ray.state import RayJob as _Job
from providers.shared.logfollow import LogSnapshot, follow_snapshots
from providers.shared.outcome import (
    OUTCOME_FILE,
    RESULT_MARKER,
    cancelled_detail,
    parse_result_marker,
    read_outcome,
    timeout_detail,
)

TERMINAL = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
MESSAGE_TAIL_CHARS = 4096
_API_ATTEMPTS = 3  # consecutive failed status polls before wait() gives up on the job server


def _job_client_class() -> Any:
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError as exc:
        raise ProviderError(
            f"the ray provider needs the Ray SDK ({exc}); install meridian-orchestrator[ray]"
        ) from exc
    return JobSubmissionClient


def _tail(text: str) -> str:
    return text if len(text) <= MESSAGE_TAIL_CHARS else "..." + text[-MESSAGE_TAIL_CHARS:]


def _is_missing(exc: ProviderError) -> bool:
    return "does not exist" in str(exc) or "status code 404" in str(exc)


class RayProvider(Provider):
    """Runs steps as Ray jobs. Config: see ``RayConfig``; options: ``OPTIONS_SCHEMA``."""

    type: ClassVar[str] = "ray"
    capabilities: ClassVar[Capabilities] = Capabilities(
        cancel=True, recover=True, streaming_logs=True, python_steps=True
    )
    options_schema: ClassVar[Mapping[str, Any]] = OPTIONS_SCHEMA

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        self.settings = RayConfig.of(self.config)
        self._client: Any = None

    def validate_options(self, options: Mapping[str, Any]) -> None:
        super().validate_options(options)
        validate_options(options)

    # ---- the job server ------------------------------------------------------------------

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``JobSubmissionClient.<method>`` in a thread; failures become ProviderError."""
        client = await self._job_client()
        return await self._bounded(getattr(client, method), *args, **kwargs)

    async def _bounded(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        where = self.settings.address or "the default address"
        try:
            return await asyncio.wait_for(
                asyncio.to_thread(fn, *args, **kwargs), self.settings.request_timeout_s
            )
        except TimeoutError as exc:
            raise ProviderError(
                f"Ray job server at {where} did not answer in {self.settings.request_timeout_s:g} s"
            ) from exc
        except Exception as exc:  # requests, ray.exceptions, RuntimeError(<HTTP status>: ...)
            raise ProviderError(f"Ray job server at {where}: {exc}") from exc

    async def _job_client(self) -> Any:
        if self._client is None:
            cls = _job_client_class()
            s = self.settings
            # The constructor already talks to the server (version check): it runs in a thread.
            self._client = await self._bounded(
                cls, s.address, headers=dict(s.headers) or None, verify=s.verify
            )
        return self._client

    async def _status(self, submission_id: str) -> str | None:
        """The job's status name, or None when the server does not know the job."""
        try:
            status = await self._call("get_job_status", submission_id)
        except ProviderError as exc:
            if _is_missing(exc):
                return None
            raise
        return str(getattr(status, "value", status))

    # ---- verbs ---------------------------------------------------------------------------

    async def submit(self, spec: ExecutionSpec) -> Handle:
        self.validate_options(spec.options)
        work_dir = spec.work_dir.resolve()
        work_dir.mkdir(parents=True, exist_ok=True)
        submission_id = f"meridian-{spec.attempt_id}"
        request = job_request(self.settings, spec, submission_id)
        try:
            await self._call("submit_job", **request)
        except ProviderError as exc:
            # Submitted before (an agent crash between submit and saving the handle): the
            # deterministic id makes the retry find that job instead of starting another.
            if "already exists" not in str(exc) or not await self._is_ours(submission_id, spec):
                raise
        timeout = spec.timeout_s if spec.timeout_s and spec.timeout_s > 0 else None
        data = {
            "submission_id": submission_id,
            "work_dir": str(work_dir),
            "timeout_s": timeout,
            "submitted_at_ms": int(time.time() * 1000),  # for the audit view
            "command": "command" in spec.options,
            "address": self.settings.address,
        }
        return Handle(provider="ray", resource_id=f"ray:{submission_id}", data=data)

    async def _is_ours(self, submission_id: str, spec: ExecutionSpec) -> bool:
        info = await self._call("get_job_info", submission_id)
        return (info.metadata or {}).get("meridian_attempt_id") == spec.attempt_id

    async def wait(self, handle: Handle) -> Outcome:
        job = _Job.of(handle)
        failures = 0
        while True:
            try:
                status = await self._status(job.submission_id)
                if status == "RUNNING" and job.overdue():
                    job.mark_ended("timed_out")
                    await self._stop(job, self.settings.kill_grace_s)
                    status = await self._status(job.submission_id)
                failures = 0
            except ProviderError as exc:
                failures += 1  # a dashboard restart or a network blip is not a failed step
                if failures >= _API_ATTEMPTS:
                    return self._infrastructure(str(exc))
                await asyncio.sleep(self.settings.poll_interval_s)
                continue
            if status is None:
                return self._gone(job)
            if status in TERMINAL:
                return await self._conclude(job, status)
            if self._stopped_pending(job, status):
                return await self._conclude(job, status)
            await asyncio.sleep(self.settings.poll_interval_s)

    def _gone(self, job: _Job) -> Outcome:
        stored = read_outcome(job.work_dir)
        if stored is not None and job.ended_by() is None:
            return stored
        return self._infrastructure(
            f"Ray job {job.submission_id} is no longer known to the job server"
        )

    @staticmethod
    def _infrastructure(message: str) -> Outcome:
        return Outcome(
            state="failed",
            error=ErrorInfo("infrastructure", "providers.base.ProviderError", message),
        )

    async def _conclude(self, job: _Job, status: str) -> Outcome:
        try:
            info = await self._call("get_job_info", job.submission_id)
        except ProviderError as exc:
            return self._infrastructure(str(exc))
        rc = getattr(info, "driver_exit_code", None)
        ended_by = job.ended_by()
        if ended_by == "timed_out":
            limit = f"{job.timeout_s:g}" if job.timeout_s is not None else "?"
            message = f"step exceeded its timeout of {limit} s; its Ray job was stopped"
            detail = timeout_detail(message)
            return Outcome(state="timed_out", exit_code=rc, error=detail)
        if ended_by == "cancelled" or status == "STOPPED":
            message = "step was cancelled" if ended_by else f"Ray job was stopped: {info.message}"
            if status == "PENDING":
                message += " before its Ray job started"
            detail = cancelled_detail(message)
            return Outcome(state="cancelled", exit_code=rc, error=detail)
        if job.command:
            if status == "SUCCEEDED":
                return Outcome(state="succeeded", exit_code=rc or 0, result_json="null")
            return self._failed_without_outcome(job, info, rc)
        outcome = read_outcome(job.work_dir)
        if outcome is None:  # not a shared filesystem (upload_bundle): the marker in the logs
            try:
                outcome = parse_result_marker(await self._call("get_job_logs", job.submission_id))
            except ProviderError as exc:
                return self._infrastructure(str(exc))
        if outcome is not None:
            if rc is None:  # stepexec exits 0 on success and 1 on failure
                rc = 0 if outcome.state == "succeeded" else 1
            return dataclasses.replace(outcome, exit_code=rc)
        if status == "SUCCEEDED":
            return self._infrastructure(
                f"Ray job {job.submission_id} succeeded without reporting an outcome "
                f"(is {job.work_dir} shared with the cluster? see option upload_bundle)"
            )
        return self._failed_without_outcome(job, info, rc)

    def _failed_without_outcome(self, job: _Job, info: Any, rc: int | None) -> Outcome:
        error_type = str(getattr(info.error_type, "value", info.error_type) or "")
        message = f"Ray job {job.submission_id} failed"
        message += f" with exit code {rc}" if rc is not None else ""
        message += f" ({error_type}): {_tail(str(info.message or ''))}"
        # A non-zero exit of the step is the step's failure (retryable); a job that never got
        # to run its entrypoint (runtime env, supervisor actor) is Ray's.
        error_class: Literal["transient", "infrastructure"] = (
            "transient"
            if error_type.startswith("JOB_ENTRYPOINT_COMMAND_ERROR")
            else "infrastructure"
        )
        detail = ErrorInfo(error_class, f"ray.job_submission.{error_type or 'FAILED'}", message)
        return Outcome(state="failed", exit_code=rc, error=detail)

    async def cancel(self, handle: Handle, grace_s: float) -> None:
        job = _Job.of(handle)
        status = await self._status(job.submission_id)
        if status is None or status in TERMINAL:
            return  # nothing left to stop: cancel is idempotent
        job.mark_ended("cancelled")
        await self._stop(job, grace_s)

    async def _stop(self, job: _Job, grace_s: float) -> None:
        """``stop_job`` (SIGTERM to the job's process group; Ray itself SIGKILLs it after
        ``RAY_JOB_STOP_WAIT_TIME_S``), then wait up to ``grace_s`` for a terminal status."""
        await self._call("stop_job", job.submission_id)
        deadline = time.monotonic() + max(0.0, grace_s)
        while time.monotonic() < deadline:
            status = await self._status(job.submission_id)
            if status is None or status in TERMINAL:
                return
            await asyncio.sleep(min(self.settings.poll_interval_s, 0.2))

    async def recover(self, handle: Handle) -> bool:
        job = _Job.of(handle)
        if await self._status(job.submission_id) is not None:
            return True
        # Deleted from the server (or a new cluster): what the work dir says is still readable.
        return job.ended_by() is not None or (job.work_dir / OUTCOME_FILE).exists()

    async def logs(self, handle: Handle) -> AsyncIterator[LogRecord]:
        job = _Job.of(handle)
        failures = 0
        last_text = ""  # a job the server forgot still ends with the lines read before

        async def snapshot() -> LogSnapshot:
            nonlocal failures, last_text
            try:
                # Decide "ended" before reading so the last read covers everything written.
                status = await self._status(job.submission_id)
                text = (
                    None if status is None else await self._call("get_job_logs", job.submission_id)
                )
                failures = 0
            except ProviderError:
                failures += 1  # a dashboard restart or a network blip is not the end
                if failures >= _API_ATTEMPTS:
                    raise
                return LogSnapshot(ended=False, text=None)
            ended = status is None or status in TERMINAL or self._stopped_pending(job, status)
            last_text = last_text if text is None else text
            return LogSnapshot(ended=ended, text=last_text)

        async for line in follow_snapshots(snapshot, self.settings.poll_interval_s):
            record = _record(line)
            if record is not None:
                yield record

    @staticmethod
    def _stopped_pending(job: _Job, status: str) -> bool:
        """Cancelled while PENDING: Ray queues stop_job until the job's supervisor actor starts
        (possibly never, without resources), so the step never ran; Ray stops it if it starts.
        """
        return status == "PENDING" and job.ended_by() == "cancelled"

    async def close(self) -> None:
        # Running jobs are deliberately left alone: a restarted agent re-attaches to them.
        self._client = None


def _record(line: str) -> LogRecord | None:
    """One job log line as a record; the outcome marker is not log output."""
    line = line.removesuffix("\r")
    if line.startswith(RESULT_MARKER):
        return None
    stream: Literal["stdout", "stderr"] = "stdout"
    if line.startswith(STDERR_TAG):
        stream, line = "stderr", line[len(STDERR_TAG) :]
    return LogRecord(stream=stream, text=line, at_unix_ms=int(time.time() * 1000))
