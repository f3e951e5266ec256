"""AWS plumbing of the ``aws-ecs`` provider: lazy boto3, client construction, error translation.

boto3 is an optional extra, so nothing here imports it at module import time: ``import
providers.aws_ecs`` works without it, and the first API call raises a ``ProviderError`` that says
which extra to install. boto3 blocks, so every call runs in a worker thread
(``asyncio.to_thread``); botocore clients are thread-safe once created.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from providers.base import ProviderError

INSTALL_HINT = "install meridian-orchestrator[aws]"
_SESSIONS: dict[tuple[str | None, ...], Any] = {}
_SESSIONS_LOCK = threading.Lock()


class AwsApiError(ProviderError):
    """An AWS API call failed; ``code`` is AWS's error code (or the botocore exception name)."""

    def __init__(self, operation: str, code: str, message: str) -> None:
        super().__init__(f"AWS {operation} failed: {code}: {message}")
        self.operation = operation
        self.code = code
        self.aws_message = message


@dataclass(frozen=True)
class AwsConnection:
    """Where and as whom to call AWS. Unset fields fall back to the SDK's defaults.

    Leaving the key fields unset uses boto3's default credential chain (environment, shared
    config/profile, web identity, ECS task role, EC2 instance profile).
    """

    region: str | None = None
    endpoint_url: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    profile: str | None = None
    verify: bool | str = True
    max_attempts: int = 5
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0


def _boto3() -> Any:
    try:
        import boto3
    except ImportError as exc:  # the optional extra is missing
        raise ProviderError(f"the AWS providers need boto3: {INSTALL_HINT}") from exc
    return boto3


def make_client(service: str, conn: AwsConnection, endpoint_url: str | None = None) -> Any:
    """A botocore client for ``service`` (blocking: call it from a worker thread)."""
    boto3 = _boto3()
    from botocore.config import Config

    key = (conn.access_key_id, conn.secret_access_key, conn.session_token, conn.profile)
    with _SESSIONS_LOCK:  # a boto3 Session is not thread-safe; its clients are
        # One session per identity: it caches the service models, so a provider re-created
        # after an agent restart (or one per region) gets its clients in milliseconds.
        session = _SESSIONS.get(key)
        if session is None:
            session = _SESSIONS[key] = boto3.session.Session(
                aws_access_key_id=conn.access_key_id,
                aws_secret_access_key=conn.secret_access_key,
                aws_session_token=conn.session_token,
                profile_name=conn.profile,
            )
    config = Config(
        # "standard" retries throttling and 5xx with backoff: polling loops must not fail on
        # one throttled DescribeTasks.
        retries={"mode": "standard", "max_attempts": conn.max_attempts},
        connect_timeout=conn.connect_timeout_s,
        read_timeout=conn.read_timeout_s,
        user_agent_extra="meridian-orchestrator",
    )
    try:
        with _SESSIONS_LOCK:
            return session.client(
                service,
                region_name=conn.region,
                endpoint_url=endpoint_url or conn.endpoint_url,
                verify=conn.verify,
                config=config,
            )
    except Exception as exc:  # NoRegionError, ProfileNotFound, ... : botocore's message says it
        raise ProviderError(f"cannot create the AWS {service} client: {exc}") from exc


async def call(client: Any, operation: str, **kwargs: Any) -> dict[str, Any]:
    """Run ``client.<operation>(**kwargs)`` in a thread; AWS errors become ``AwsApiError``."""
    from botocore.exceptions import BotoCoreError, ClientError

    method: Callable[..., dict[str, Any]] = getattr(client, operation)
    try:
        return await asyncio.to_thread(method, **kwargs)
    except ClientError as exc:
        error: Mapping[str, Any] = exc.response.get("Error", {})
        code = str(error.get("Code") or "ClientError")
        message = str(error.get("Message") or exc)
        raise AwsApiError(operation, code, message) from exc
    except BotoCoreError as exc:  # no credentials, endpoint unreachable, ...
        raise AwsApiError(operation, type(exc).__name__, str(exc)) from exc
