"""Map Meridian's error tree to gRPC status codes at the edge, with messages users can act on."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc

from control_plane.orchestration.machines import IllegalTransition
from meridian.core.errors import (
    ConflictError,
    MeridianError,
    NotFound,
    PermissionDenied,
    ValidationError,
)

log = logging.getLogger(__name__)
R = TypeVar("R")
MAX_STATUS_MESSAGE = 2000

CODES: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (ValidationError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (ConflictError, grpc.StatusCode.FAILED_PRECONDITION),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (IllegalTransition, grpc.StatusCode.FAILED_PRECONDITION),
)


def status_for(exc: Exception) -> grpc.StatusCode:
    for kind, code in CODES:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


async def abort(context: grpc.aio.ServicerContext, exc: Exception) -> NoReturn:
    code = status_for(exc)
    if code == grpc.StatusCode.INTERNAL:
        log.exception("internal error", exc_info=exc)
        await context.abort(code, "internal error in the control plane; see its log")
    # Bounded: a status message travels in gRPC metadata (8 KiB soft, 16 KiB hard limit), and
    # messages may quote the (hostile) input that caused them.
    await context.abort(code, bounded(str(exc)))
    raise AssertionError("unreachable")  # context.abort always raises


def bounded(message: str, limit: int = MAX_STATUS_MESSAGE) -> str:
    return message if len(message) <= limit else message[: limit - 20] + "... (truncated)"


def rpc(
    handler: Callable[..., Awaitable[R]],
) -> Callable[..., Awaitable[R]]:
    """Decorate a unary handler so domain errors become the right status code."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> R:
        try:
            return await handler(self, request, context)
        except (MeridianError, IllegalTransition) as exc:
            await abort(context, exc)
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            await abort(context, exc)

    return wrapper
