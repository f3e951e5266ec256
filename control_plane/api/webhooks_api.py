"""The webhook RPC of ControlService (a mixin it inherits): ``CreateWebhook`` (operators)
makes a token that may trigger one deployment through ``POST /hooks/<id>`` on the web
listener, and answers it once; only its SHA-256 is stored (``usecases/webhooks.py``)."""

from __future__ import annotations

import grpc

from control_plane.api.errors import rpc
from control_plane.api.services import Services
from control_plane.usecases.webhooks import create_webhook
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
