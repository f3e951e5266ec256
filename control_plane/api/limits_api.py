"""The concurrency-limit RPCs of ControlService (a mixin it inherits): admins set and delete
named limits, viewers list them with their holders and how many wait
(``usecases.limits``; roles in ``auth/api_tokens.py``)."""

from __future__ import annotations

import grpc

from control_plane.api.errors import rpc
from control_plane.api.services import Services
from control_plane.usecases.limits import LimitView, delete_limit, list_limits, set_limit
from protos.meridian.v1 import control_pb2


class LimitsApi:
    _s: Services

    @rpc
    async def SetLimit(
        self, request: control_pb2.SetLimitRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.LimitInfo:
        view = await self._s.store.transact(set_limit, request.name, int(request.limit))
        return limit_info(view)

    @rpc
    async def ListLimits(
        self, request: control_pb2.ListLimitsRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.ListLimitsResponse:
        views = await self._s.store.transact(list_limits)
        return control_pb2.ListLimitsResponse(limits=[limit_info(v) for v in views])

    @rpc
    async def DeleteLimit(
        self, request: control_pb2.DeleteLimitRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.LimitInfo:
        return limit_info(await self._s.store.transact(delete_limit, request.name))


def limit_info(view: LimitView) -> control_pb2.LimitInfo:
    return control_pb2.LimitInfo(
        name=view.name, limit=view.limit, holders=list(view.holders), waiting=view.waiting
    )
