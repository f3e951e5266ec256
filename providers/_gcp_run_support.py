"""Plumbing of the ``gcp-cloud-run`` provider: SDK loading, clients, handles, state mapping.

Kept apart from ``providers/gcp_cloud_run.py`` so that module reads as the provider's verbs.
The Google libraries are imported only when a provider first talks to Cloud Run.
"""

from __future__ import annotations

import functools
import importlib
import time
from dataclasses import dataclass
from typing import Any

from providers._gcp_run_config import CloudRunConfig
from providers._outcome import cancelled_detail, timeout_detail
from providers.base import ErrorInfo, Handle, Outcome, ProviderError

TYPE = "gcp-cloud-run"


@dataclass(frozen=True)
class Sdk:
    run_v2: Any
    errors: Any  # google.api_core.exceptions


@functools.cache
def load_sdk() -> Sdk:
    """The google-cloud-run package, imported only when a provider talks to Cloud Run."""
    try:
        exceptions = importlib.import_module("google.api_core.exceptions")
        run_v2 = importlib.import_module("google.cloud.run_v2")
    except ImportError as exc:
        raise ProviderError(
            f"the gcp-cloud-run provider needs google-cloud-run: "
            f"install meridian-orchestrator[gcp] ({exc})"
        ) from exc
    return Sdk(run_v2=run_v2, errors=exceptions)


@dataclass(frozen=True)
class Attempt:
    """What a Cloud Run handle says, typed."""

    execution: str
    python: bool
    timeout_s: float | None
    submitted_at_ms: int

    @classmethod
    def of(cls, handle: Handle) -> Attempt:
        if handle.provider != TYPE:
            raise ProviderError(f"not a {TYPE} handle (provider {handle.provider!r})")
        try:
            timeout = handle.data.get("timeout_s")
            return cls(
                execution=handle.resource_id,
                python=bool(handle.data["python"]),
                timeout_s=None if timeout is None else float(timeout),
                submitted_at_ms=int(handle.data["submitted_at_ms"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProviderError(f"malformed {TYPE} handle {handle.to_json()}: {exc}") from exc

    def deadline(self) -> float | None:
        """The monotonic time at which the attempt times out (survives a re-attach)."""
        if self.timeout_s is None:
            return None
        return time.monotonic() + self.timeout_s - (time.time() - self.submitted_at_ms / 1000)

    def ran_out(self, execution: Any) -> bool:
        """Whether the execution ended only after its timeout (Cloud Run's or ours)."""
        if self.timeout_s is None or "completion_time" not in execution:
            return False
        ended_ms = execution.completion_time.timestamp() * 1000
        return ended_ms - self.submitted_at_ms >= self.timeout_s * 1000


@dataclass
class Clients:
    jobs: Any
    executions: Any
    tasks: Any
    channel: Any  # the channel we made, or None when the SDK made its own
    external: bool = False  # the config handed us the channel: its owner closes it

    async def close(self) -> None:
        if self.external:
            return
        if self.channel is not None:
            await self.channel.close()
            return
        for client in (self.jobs, self.executions, self.tasks):
            await client.transport.close()


def execution_state(execution: Any) -> str:
    """succeeded / failed / cancelled of an execution that has a completion time."""
    if execution.cancelled_count > 0:
        return "cancelled"
    for condition in execution.conditions:
        if condition.type_ == "Completed":
            if condition.execution_reason.name in ("CANCELLED", "CANCELLING"):
                return "cancelled"
            if condition.state.name == "CONDITION_SUCCEEDED":
                return "succeeded"
            return "failed"
    wanted = max(1, execution.task_count)
    return "succeeded" if execution.succeeded_count >= wanted else "failed"


def condition_message(execution: Any) -> str:
    for condition in execution.conditions:
        if condition.type_ == "Completed" and condition.message:
            return str(condition.message)
    return ""


def infrastructure(message: str, exit_code: int | None = None) -> Outcome:
    detail = ErrorInfo("infrastructure", "providers.base.ProviderError", message)
    return Outcome(state="failed", exit_code=exit_code, error=detail)


def make_clients(settings: CloudRunConfig, run_v2: Any) -> Clients:
    from google.cloud.run_v2.services.executions import transports as ex_t
    from google.cloud.run_v2.services.jobs import transports as jobs_t
    from google.cloud.run_v2.services.tasks import transports as tasks_t

    s = settings
    channel, owned = s.channel, None
    if callable(channel):
        channel = owned = channel()
    elif channel is None and s.insecure:
        import grpc

        channel = owned = grpc.aio.insecure_channel(str(s.endpoint))
    if channel is not None:
        return Clients(
            jobs=run_v2.JobsAsyncClient(transport=jobs_t.JobsGrpcAsyncIOTransport(channel=channel)),
            executions=run_v2.ExecutionsAsyncClient(
                transport=ex_t.ExecutionsGrpcAsyncIOTransport(channel=channel)
            ),
            tasks=run_v2.TasksAsyncClient(
                transport=tasks_t.TasksGrpcAsyncIOTransport(channel=channel)
            ),
            channel=owned,
            external=owned is None,
        )
    options = {"api_endpoint": s.endpoint} if s.endpoint else None
    kwargs: dict[str, Any] = {"credentials": s.credentials, "client_options": options}
    return Clients(
        jobs=run_v2.JobsAsyncClient(transport="grpc_asyncio", **kwargs),
        executions=run_v2.ExecutionsAsyncClient(transport="grpc_asyncio", **kwargs),
        tasks=run_v2.TasksAsyncClient(transport="grpc_asyncio", **kwargs),
        channel=None,
    )


def timed_out(attempt: Attempt, how: str, exit_code: int | None = None) -> Outcome:
    message = f"step exceeded its timeout of {attempt.timeout_s:g} s and {how}"
    detail = timeout_detail(message)
    return Outcome(state="timed_out", exit_code=exit_code, error=detail)


def cancelled() -> Outcome:
    detail = cancelled_detail()
    return Outcome(state="cancelled", error=detail)
