"""Request bodies that are not valid protobuf are refused with INVALID_ARGUMENT.

gRPC Python decodes each request message with the method's ``request_deserializer`` before
(unary) or while (streams) the handler runs; a ``DecodeError`` there ends the call as UNKNOWN
and logs an error, before any Meridian code can answer. This interceptor wraps the deserializer
of every Meridian method so a body that does not decode becomes an :class:`Undecodable` marker,
and wraps the handler so the marker -- as the request, from the request iterator or from
``context.read()`` -- aborts the call with INVALID_ARGUMENT naming the expected message.

It must be the innermost interceptor (last in the server's list): the others then wrap the
tolerant deserializer, and the API-token check still runs before a body is judged.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import grpc
from google.protobuf.message import DecodeError

from control_plane.api.errors import ProtocolError, abort

PREFIX = "/meridian.v1."


class Undecodable:
    """Stands in for a request message whose bytes did not decode."""

    __slots__ = ("message_name",)

    def __init__(self, message_name: str) -> None:
        self.message_name = message_name


class RejectUndecodable(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or handler.request_deserializer is None or not method.startswith(PREFIX):
            return handler
        decode = handler.request_deserializer
        return _tolerant(handler, decode, _message_name(decode, method))


def _message_name(deserializer: Callable[[bytes], Any], method: str) -> str:
    """``GetRunRequest`` for ``GetRunRequest.FromString``; the method name otherwise."""
    message_class = getattr(deserializer, "__self__", None)
    descriptor = getattr(message_class, "DESCRIPTOR", None)
    return str(getattr(descriptor, "name", "")) or f"{method.rsplit('/', 1)[-1]} request"


async def _refuse(context: grpc.aio.ServicerContext, marker: Undecodable) -> NoReturn:
    await abort(context, ProtocolError(f"request is not a valid {marker.message_name} protobuf"))


class _CheckedContext:
    """The servicer context with ``read()`` refusing an undecodable message."""

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self._context = context

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    async def read(self) -> Any:
        message = await self._context.read()
        if isinstance(message, Undecodable):
            await _refuse(self._context, message)
        return message


async def _checked(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
    async for message in requests:
        if isinstance(message, Undecodable):
            await _refuse(context, message)
        yield message


def _tolerant(
    handler: grpc.RpcMethodHandler, decode: Callable[[bytes], Any], name: str
) -> grpc.RpcMethodHandler:
    """The same handler, with a deserializer that never raises and a behaviour that refuses
    its marker. Each wrapper keeps its kind (coroutine or async generator): gRPC picks the
    reader/writer API or the iterator API from it."""

    def deserialize(data: bytes) -> Any:
        try:
            return decode(data)
        except DecodeError:
            return Undecodable(name)

    kwargs = {
        "request_deserializer": deserialize,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary or handler.unary_stream:
        inner: Any = handler.unary_unary or handler.unary_stream

        async def unary_request(request: Any, context: Any) -> Any:
            if isinstance(request, Undecodable):
                await _refuse(context, request)
            return await inner(request, context)

        async def unary_request_stream(request: Any, context: Any) -> AsyncIterator[Any]:
            if isinstance(request, Undecodable):
                await _refuse(context, request)
            async for item in inner(request, context):
                yield item

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(unary_request, **kwargs)
        streaming = inspect.isasyncgenfunction(inner)
        return grpc.unary_stream_rpc_method_handler(
            unary_request_stream if streaming else unary_request, **kwargs
        )
    inner = handler.stream_unary or handler.stream_stream

    async def stream_request(requests: Any, context: Any) -> Any:
        return await inner(_checked(requests, context), _CheckedContext(context))

    async def stream_request_stream(requests: Any, context: Any) -> AsyncIterator[Any]:
        async for item in inner(_checked(requests, context), _CheckedContext(context)):
            yield item

    behaviour = stream_request_stream if inspect.isasyncgenfunction(inner) else stream_request
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(behaviour, **kwargs)
    return grpc.stream_stream_rpc_method_handler(behaviour, **kwargs)
