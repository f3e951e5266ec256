"""Every client call is authenticated by API token and authorized by role, at the edge.

A grpc.aio server interceptor wraps each non-public method's handler: the wrapper reads the
``authorization: Bearer mat_...`` metadata, looks the token up (cached for a few seconds, so a
revocation takes effect within ``CACHE_S``), checks the role table in
``control_plane/auth/api_tokens.py``, and records the caller for the audit log. A runner
token refused for another run may still read (GetRun, WatchRun, FetchResult) a direct child
of its own run, looked up in the store (``run_deployment`` follows the child it started).
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from control_plane.api.errors import abort
from control_plane.audit import acting_as
from control_plane.auth.api_token_store import Principal, authenticate
from control_plane.auth.api_tokens import check_role, is_public, may_read_child
from control_plane.store.db import Store
from control_plane.usecases.subflows import is_child_of
from meridian.core.errors import MeridianError, PermissionDenied, Unauthenticated

CACHE_S = 5.0
# The caller of the request being handled (handlers read it for environment scoping).
CURRENT_PRINCIPAL: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "meridian_principal", default=None
)


def allowed_environments() -> tuple[str, ...]:
    """Environments the caller's token is limited to; empty = all."""
    principal = CURRENT_PRINCIPAL.get()
    return principal.environments if principal is not None else ()


HINT = "pass --token, set MERIDIAN_TOKEN, or run `meridian login`"


class ApiTokenAuth(grpc.aio.ServerInterceptor):
    def __init__(self, store: Store) -> None:
        self._store = store
        self._cache: dict[str, tuple[Principal, float]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or is_public(method):
            return handler
        return _guard(handler, method, self._authorize)

    async def _authorize(self, method: str, context: Any, request: Any) -> None:
        metadata = dict(context.invocation_metadata() or ())
        header = str(metadata.get("authorization", ""))
        if not header.lower().startswith("bearer "):
            await abort(context, Unauthenticated(f"this call needs an API token; {HINT}"))
        principal = await self._principal(header[7:].strip(), context)
        try:
            check_role(method, principal.role, principal.flow_run_id, _run_of(request))
        except PermissionDenied as exc:
            if not await self._reads_own_child(method, principal, _run_of(request)):
                await abort(context, exc)
        acting_as(principal.actor)
        CURRENT_PRINCIPAL.set(principal)

    async def _reads_own_child(
        self, method: str, principal: Principal, request_run: str | None
    ) -> bool:
        """A runner token reading a direct child of its own run (``run_deployment`` waits for
        the child it triggered): GetRun, WatchRun and FetchResult only, full run id only."""
        if not may_read_child(method, principal.role) or not request_run:
            return False
        parent = principal.flow_run_id or ""
        return bool(await self._store.run(is_child_of, request_run.strip(), parent))

    async def _principal(self, token: str, context: Any) -> Principal:
        cached = self._cache.get(token)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        try:
            principal = await self._store.run(authenticate, token, self._store.clock())
        except MeridianError as exc:
            await abort(context, Unauthenticated(f"{exc}; {HINT}"))
        if len(self._cache) > 10_000:  # bounded: a flood of distinct tokens cannot grow it
            self._cache.clear()
        self._cache[token] = (principal, time.monotonic() + CACHE_S)
        return principal


def _run_of(request: Any) -> str | None:
    # A subflow trigger names its parent run: a runner token may only be that parent's.
    run = getattr(request, "flow_run_id", None) or getattr(request, "parent_run_id", None)
    return str(run) if run else None


def _guard(handler: grpc.RpcMethodHandler, method: str, authorize: Any) -> grpc.RpcMethodHandler:
    """The same handler, with ``authorize`` run first inside the call."""
    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        inner_uu: Any = handler.unary_unary

        async def unary_unary(request: Any, context: Any) -> Any:
            await authorize(method, context, request)
            return await inner_uu(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, **kwargs)
    if handler.unary_stream:
        inner_us: Any = handler.unary_stream

        async def unary_stream(request: Any, context: Any) -> AsyncIterator[Any]:
            await authorize(method, context, request)
            async for item in inner_us(request, context):
                yield item

        return grpc.unary_stream_rpc_method_handler(unary_stream, **kwargs)
    if handler.stream_unary:
        inner_su: Any = handler.stream_unary

        async def stream_unary(requests: Any, context: Any) -> Any:
            await authorize(method, context, None)
            return await inner_su(requests, context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, **kwargs)
    inner_ss: Any = handler.stream_stream

    async def stream_stream(requests: Any, context: Any) -> AsyncIterator[Any]:
        await authorize(method, context, None)
        async for item in inner_ss(requests, context):
            yield item

    return grpc.stream_stream_rpc_method_handler(stream_stream, **kwargs)
