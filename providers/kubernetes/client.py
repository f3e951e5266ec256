"""The Kubernetes provider's API calls: the official client, blocking, run in threads.

One ``JobsApi`` per provider instance owns the ``ApiClient`` (built on first use from an
injected host/token/CA, the in-cluster service account or a kubeconfig) and turns every failure
into ``KubernetesApiError`` carrying the API server's own message.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from providers.base import ProviderError
from providers.kubernetes.config import KubernetesConfig
from providers.kubernetes.manifest import CONTAINER
from providers.kubernetes.state import Attempt, newest_pod

T = TypeVar("T")
_TRANSIENT_STATUS = frozenset({0, 429, 500, 502, 503, 504})


class KubernetesApiError(ProviderError):
    """The API server refused or failed a call; ``status`` 0 means it was not reached."""

    def __init__(self, what: str, status: int, message: str) -> None:
        super().__init__(f"Kubernetes API: {what} failed: HTTP {status}: {message}")
        self.status = status


def sdk() -> Any:
    try:
        import kubernetes
    except ImportError as exc:
        raise ProviderError(
            "the kubernetes provider needs the kubernetes client: "
            "install meridian-orchestrator[kubernetes]"
        ) from exc
    return kubernetes


def transient(exc: KubernetesApiError) -> bool:
    return exc.status in _TRANSIENT_STATUS


def _api_message(exc: Any) -> str:
    """The API server's own words: the ``message`` of the Status body when there is one."""
    body = getattr(exc, "body", None)
    if body is None and getattr(exc, "data", None) is not None:
        body = exc.data
    try:
        return str(json.loads(body or "")["message"])
    except (TypeError, ValueError, KeyError):
        return str(getattr(exc, "reason", None) or exc)


class JobsApi:
    """batch/v1 Jobs, pods and pod logs of one provider instance."""

    def __init__(self, settings: KubernetesConfig) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._client: Any = None

    def _client_now(self) -> Any:
        with self._lock:
            if self._client is None:
                k8s = sdk()
                conf = k8s.client.Configuration()
                s = self.settings
                if s.host:
                    conf.host = s.host
                    conf.verify_ssl = s.verify_ssl
                    conf.ssl_ca_cert = s.ca_cert
                elif s.in_cluster:
                    k8s.config.load_incluster_config(client_configuration=conf)
                else:
                    k8s.config.load_kube_config(
                        config_file=s.kubeconfig, context=s.context, client_configuration=conf
                    )
                if s.token:
                    conf.api_key = {"authorization": s.token}
                    conf.api_key_prefix = {"authorization": "Bearer"}
                self._client = k8s.client.ApiClient(conf)
            return self._client

    async def call(self, what: str, call: Callable[[Any, Any], T]) -> T:
        """Run ``call(batch_v1, core_v1)`` in a thread; any failure -> KubernetesApiError."""

        def run() -> T:
            k8s = sdk()
            try:
                client = self._client_now()
                return call(k8s.client.BatchV1Api(client), k8s.client.CoreV1Api(client))
            except k8s.client.exceptions.ApiException as exc:
                raise KubernetesApiError(what, int(exc.status or 0), _api_message(exc)) from exc
            except (OSError, ValueError, k8s.config.ConfigException) as exc:
                raise KubernetesApiError(what, 0, str(exc)) from exc
            except Exception as exc:  # urllib3 errors (MaxRetryError, SSLError, ...)
                if type(exc).__module__.startswith("urllib3"):
                    raise KubernetesApiError(what, 0, str(exc)) from exc
                raise

        return await asyncio.to_thread(run)

    @property
    def timeout(self) -> float:
        return self.settings.request_timeout_s or 30.0

    async def read_job(self, a: Attempt) -> Any:
        return await self.call(
            f"get Job {a.namespace}/{a.name}",
            lambda b, _: b.read_namespaced_job(a.name, a.namespace, _request_timeout=self.timeout),
        )

    async def get_job(self, a: Attempt) -> Any | None:
        """The Job, or None when it no longer exists (or was replaced by another of that name)."""
        try:
            job = await self.read_job(a)
        except KubernetesApiError as exc:
            if exc.status == 404:
                return None
            raise
        return job if job.metadata.uid == a.uid else None

    async def pod(self, a: Attempt) -> Any | None:
        pods = await self.call(
            f"list pods of Job {a.namespace}/{a.name}",
            lambda _, c: c.list_namespaced_pod(
                a.namespace, label_selector=f"job-name={a.name}", _request_timeout=self.timeout
            ),
        )
        return newest_pod(pods)

    async def pod_log(self, a: Attempt, pod: Any) -> str | None:
        """The pod's whole log with timestamps; None while the container has not started."""
        name = pod.metadata.name
        try:
            raw = await self.call(
                f"read log of pod {a.namespace}/{name}",
                lambda _, c: (
                    c.read_namespaced_pod_log(
                        name,
                        a.namespace,
                        container=CONTAINER,
                        timestamps=True,
                        # Raw bytes: the client would otherwise try to parse JSON-looking logs.
                        _preload_content=False,
                        _request_timeout=self.timeout,
                    ).data
                ),
            )
        except KubernetesApiError as exc:
            if exc.status in (400, 404):  # waiting to start / pod gone
                return None
            raise
        return bytes(raw).decode("utf-8", errors="replace")

    async def delete(self, a: Attempt, policy: str) -> None:
        try:
            await self.call(
                f"delete Job {a.namespace}/{a.name}",
                lambda b, _: b.delete_namespaced_job(
                    a.name, a.namespace, propagation_policy=policy, _request_timeout=self.timeout
                ),
            )
        except KubernetesApiError as exc:
            if exc.status != 404:  # already gone: deleting is idempotent
                raise

    async def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.close)
