"""The webhook RPCs of ControlService (a mixin it inherits): ``CreateWebhook`` (operators)
makes a token that may trigger one deployment through ``POST /hooks/<id>`` on the web
listener, and answers it once; only its SHA-256 is stored (``usecases/webhooks.py``).
``ListWebhooks`` (viewers) lists a deployment's webhooks without tokens; ``RevokeWebhook``
(operators, audited) makes a token answer 401."""

from __future__ import annotations

import grpc

from control_plane.api.errors import rpc
from control_plane.api.services import Services
from control_plane.usecases.webhooks import (
    WebhookView,
    create_webhook,
    list_webhooks,
    revoke_webhook,
)
from meridian.core.convert import ms_from_time
from meridian.core.errors import ValidationError
from protos.meridian.v1 import control_pb2

MAX_NAME = 128


class WebhooksApi:
    _s: Services

    @rpc
    async def CreateWebhook(
        self, request: control_pb2.CreateWebhookRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.CreateWebhookResponse:
        if not request.deployment:
            raise ValidationError("deployment is required")
        if len(request.name) > MAX_NAME:
            raise ValidationError(f"a webhook name is at most {MAX_NAME} characters")
        created = await self._s.store.transact(create_webhook, request.deployment, request.name)
        return control_pb2.CreateWebhookResponse(
            webhook_id=created.webhook_id, token=created.token, url_path=created.url_path
        )

    @rpc
    async def ListWebhooks(
        self, request: control_pb2.ListWebhooksRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.ListWebhooksResponse:
        _check_deployment(request.deployment)
        found = await self._s.store.run(list_webhooks, request.deployment)
        return control_pb2.ListWebhooksResponse(webhooks=[_info(v) for v in found])

    @rpc
    async def RevokeWebhook(
        self, request: control_pb2.RevokeWebhookRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.WebhookInfo:
        _check_deployment(request.deployment)
        if not request.webhook_id or len(request.webhook_id) > 36:
            raise ValidationError("webhook_id must be 1-36 characters")
        view = await self._s.store.transact(revoke_webhook, request.deployment, request.webhook_id)
        return _info(view)


def _check_deployment(name: str) -> None:
    if not name or len(name) > MAX_NAME:
        raise ValidationError(f"deployment must be 1-{MAX_NAME} characters")


def _info(view: WebhookView) -> control_pb2.WebhookInfo:
    return control_pb2.WebhookInfo(
        webhook_id=view.webhook_id,
        deployment=view.deployment,
        name=view.name,
        created_at_unix_ms=ms_from_time(view.created_at),
        created_by=view.created_by,
        revoked_at_unix_ms=ms_from_time(view.revoked_at) if view.revoked_at else 0,
    )
