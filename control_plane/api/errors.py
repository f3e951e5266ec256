"""Map Meridian's error tree to gRPC status codes at the edge, with messages users can act on.

Every handler goes through this one mapping: unary and client-streaming handlers with
``@rpc``, server-streaming ones (async generators) with ``@rpc_stream``. A handler raises
domain errors (or the two protocol errors below) and never picks a status code itself, so
one error always reaches the caller with one code. The few subclasses a code does not tell
apart (``meridian.core.wireerrors``) are also named in the trailing metadata.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc

from control_plane.orchestration.machines import IllegalTransition
from control_plane.transfers.relay import ResultCorrupt
from meridian.core.errors import (
    ConflictError,
    LimitExceeded,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    ValidationError,
)
from meridian.core.wireerrors import ERROR_KIND_KEY, kind_of

log = logging.getLogger(__name__)
R = TypeVar("R")
MAX_STATUS_MESSAGE = 2000


class ProtocolError(Exception):
    """The peer broke the wire protocol (frame order, sizes, rates): INVALID_ARGUMENT."""


class CallTimedOut(Exception):
    """The peer did not send what the protocol needs in time: DEADLINE_EXCEEDED."""


class StreamClosed(Exception):
    """The server ends a healthy stream (replaced, certificate expired): UNAVAILABLE, so the
    peer reconnects."""


# Most specific first: Unauthenticated is a PermissionDenied.
CODES: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (ValidationError, grpc.StatusCode.INVALID_ARGUMENT),
    (ProtocolError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (ResultCorrupt, grpc.StatusCode.DATA_LOSS),
    (ConflictError, grpc.StatusCode.FAILED_PRECONDITION),
    (IllegalTransition, grpc.StatusCode.FAILED_PRECONDITION),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (LimitExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (CallTimedOut, grpc.StatusCode.DEADLINE_EXCEEDED),
    (StreamClosed, grpc.StatusCode.UNAVAILABLE),
)


def status_for(exc: BaseException) -> grpc.StatusCode:
    for kind, code in CODES:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


async def abort(context: grpc.aio.ServicerContext, exc: BaseException) -> NoReturn:
    code = status_for(exc)
    if code == grpc.StatusCode.INTERNAL:
        log.exception("internal error", exc_info=exc)
        await context.abort(code, "internal error in the control plane; see its log")
    # A subclass the code does not tell apart (a residency refusal among PERMISSION_DENIED)
    # travels by name in the trailing metadata, so clients raise that class again.
    kind = kind_of(exc)
    trailers = ((ERROR_KIND_KEY, kind),) if kind else ()
    # Bounded: a status message travels in gRPC metadata (8 KiB soft, 16 KiB hard limit), and
    # messages may quote the (hostile) input that caused them.
    await context.abort(code, bounded(str(exc)), trailers)
    raise AssertionError("unreachable")  # context.abort always raises


def bounded(message: str, limit: int = MAX_STATUS_MESSAGE) -> str:
    return message if len(message) <= limit else message[: limit - 20] + "... (truncated)"


def rpc(
    handler: Callable[..., Awaitable[R]],
) -> Callable[..., Awaitable[R]]:
    """Decorate a handler that returns (unary, client-streaming, or a bidirectional stream
    served with ``context.read``/``write``) so every error becomes its one status code."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> R:
        try:
            return await handler(self, request, context)
        except grpc.aio.AbortError:
            raise  # already ended with its status
        except Exception as exc:
            await abort(context, exc)

    return wrapper


def rpc_stream(
    handler: Callable[..., AsyncIterator[R]],
) -> Callable[..., AsyncIterator[R]]:
    """``@rpc`` for server-streaming handlers (async generators)."""

    @functools.wraps(handler)
    async def wrapper(
        self: Any, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[R]:
        try:
            async for item in handler(self, request, context):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await abort(context, exc)

    return wrapper
