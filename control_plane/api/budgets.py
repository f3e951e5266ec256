"""Every call gets a server-side time budget, whatever deadline the client set (or did not).

A client that opens an upload and then sends a byte a minute, or a hand-crafted caller with no
deadline, would otherwise hold memory and a handler for ever. Unary and client-streaming calls
are cut at their budget with DEADLINE_EXCEEDED. The long-lived calls are exempt by design:
the agent stream (closed on certificate expiry, heartbeats prove liveness) and the server
streams (``WatchRun``, downloads), which the client paces and its own deadline ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc

from control_plane.api.errors import CallTimedOut, abort

PREFIX = "/meridian.v1."
DEFAULT_BUDGET_S = 60.0
# Calls that legitimately take longer (a 64 MiB upload over a slow link, a long audit chain)
# get this many times the default.
LONG_CALLS: Mapping[str, float] = {"UploadBundle": 10.0, "VerifyAudit": 10.0}
# A result transfer's push may take hours (a 300 GB object over a slow link): the relay bounds
# it instead, by its pause between chunks (control_plane/transfers).
EXEMPT = frozenset({"PushResult"})


class CallBudgets(grpc.aio.ServerInterceptor):
    def __init__(self, default_s: float = DEFAULT_BUDGET_S) -> None:
        if default_s <= 0:
            raise ValueError("a call budget must be positive")
        self._default_s = default_s

    def budget_s(self, method_name: str) -> float:
        return self._default_s * LONG_CALLS.get(method_name, 1.0)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(PREFIX):
            return handler
        inner: Any = handler.unary_unary or handler.stream_unary
        if inner is None:  # server-streaming and bidirectional calls: exempt (see above)
            return handler
        name = method.rsplit("/", 1)[-1]
        if name in EXEMPT:
            return handler
        budget = self.budget_s(name)

        async def bounded(request: Any, context: Any) -> Any:
            timer = asyncio.timeout(budget)
            try:
                async with timer:
                    return await inner(request, context)
            except TimeoutError:
                if not timer.expired():
                    raise  # the handler's own timeout, not ours
                await abort(
                    context, CallTimedOut(f"the control plane gives {name} at most {budget:g}s")
                )

        kwargs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(bounded, **kwargs)
        return grpc.stream_unary_rpc_method_handler(bounded, **kwargs)
