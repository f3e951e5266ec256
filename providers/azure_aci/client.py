"""The Azure SDK, imported on first use, and the management client of one event loop.

The async management client runs on aiohttp, whose sessions belong to the loop they were made in,
so ``GroupsClient`` builds one per event loop and closes only the one of the running loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

from providers.azure_aci.config import AciConfig
from providers.base import ProviderError


def load_sdk() -> Any:
    """The Azure SDK modules, imported on first use so the extra stays optional."""
    try:
        from azure.core import exceptions
        from azure.identity import aio as identity
        from azure.mgmt.containerinstance import models
        from azure.mgmt.containerinstance.aio import ContainerInstanceManagementClient
    except ImportError as exc:
        raise ProviderError(
            f"the azure-aci provider needs the Azure SDK ({exc}): "
            "install meridian-orchestrator[azure]"
        ) from exc
    return type(
        "AzureSdk",
        (),
        {
            "exceptions": exceptions,
            "identity": identity,
            "models": models,
            "Client": ContainerInstanceManagementClient,
        },
    )


class GroupsClient:
    """The provider's ``ContainerInstanceManagementClient`` and the credential it made."""

    def __init__(self, settings: AciConfig) -> None:
        self.settings = settings
        self._client: Any = None
        self._credential: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def get(self) -> Any:
        """The management client, built once per event loop (aiohttp sessions are loop-bound)."""
        loop = asyncio.get_running_loop()
        if self._client is not None and self._loop is loop:
            return self._client
        azure, cfg = load_sdk(), self.settings
        transport: dict[str, Any] = {"connection_verify": cfg.connection_verify}
        credential = cfg.credential
        if credential is None:
            auth: dict[str, Any] = dict(transport)
            if cfg.authority:
                auth["authority"] = cfg.authority
            if cfg.tenant_id:
                credential = azure.identity.ClientSecretCredential(
                    cfg.tenant_id, cfg.client_id, cfg.client_secret, **auth
                )
            else:
                credential = azure.identity.DefaultAzureCredential(**auth)
            self._credential = credential  # ours to close; an injected one is the caller's
        self._client = azure.Client(
            credential,
            cfg.subscription_id,
            base_url=cfg.base_url,
            credential_scopes=[f"{cfg.base_url}/.default"],
            **transport,
        )
        self._loop = loop
        return self._client

    async def close(self) -> None:
        """Close the client and our credential if they belong to the running loop."""
        client, credential, self._client, self._credential = (
            self._client,
            self._credential,
            None,
            None,
        )
        if client is not None and self._loop is asyncio.get_running_loop():
            await client.close()
            if credential is not None:
                await credential.close()
