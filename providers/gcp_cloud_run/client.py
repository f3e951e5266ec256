"""Talking to Cloud Run: the lazily imported SDK and the async clients of one event loop.

The Google libraries are imported only when a provider first talks to Cloud Run, so the
provider module imports without the ``[gcp]`` extra.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import Any

from providers.base import ProviderError
from providers.gcp_cloud_run.config import CloudRunConfig


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
