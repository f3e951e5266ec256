"""Where the agent talks to: the control plane's mutual-TLS agent listener.

Operators give the agent the control plane's client address (``--control-plane``). The agent
listener is a second port (docs/decisions/0001); before each connection the agent asks the
public ``GetServerInfo`` call where it is, so a restarted or moved control plane is found again.
When that call fails the last known address (or the one recorded at enrollment, or else
the given address itself) is used.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc

from agent import convert
from agent.channel import channel_options, secure_channel

log = logging.getLogger("meridian.agent.endpoint")
DISCOVERY_TIMEOUT_S = 5.0
RETIRE_GRACE_S = 30.0


def join_address(dialled: str, advertised: str) -> str:
    """Fill an empty host in ``advertised`` (":7444") with the host we dialled."""
    host, _, port = advertised.rpartition(":")
    if not port:
        return dialled
    if not host:
        host = dialled.rpartition(":")[0] or "127.0.0.1"
    return f"{host}:{port}"


class AgentEndpoint:
    """Holds the mTLS channel; looks like an AgentService stub to its users."""

    def __init__(
        self,
        control_plane: str,
        *,
        ca_pem: bytes,
        key_pem: bytes,
        cert_pem: bytes,
        known_agent_address: str = "",
    ) -> None:
        self._control_plane = control_plane
        self._ca_pem = ca_pem
        self._key_pem = key_pem
        self._cert_pem = cert_pem
        self.address = known_agent_address
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None
        self._credentials_changed = False
        self._retiring: dict[grpc.aio.Channel, asyncio.Task[None]] = {}

    def use_certificate(self, key_pem: bytes, cert_pem: bytes) -> None:
        """Present this key pair from the next connection on (after a rotation).

        The open channel, and the stream on it, stay as they are: nothing running is cut.
        """
        self._key_pem, self._cert_pem = key_pem, cert_pem
        self._credentials_changed = True

    async def refresh(self) -> None:
        """Find the agent listener again and (re)build the channel if it moved."""
        # Without discovery (an older server, or a proxy that only forwards the agent port)
        # the given address itself is the best guess.
        address = await self._discover() or self.address or self._control_plane
        if address != self.address or self._channel is None or self._credentials_changed:
            self._retire_channel()
            self._credentials_changed = False
            self.address = address
            self._channel = secure_channel(
                address, ca_pem=self._ca_pem, key_pem=self._key_pem, cert_pem=self._cert_pem
            )
            self._stub = convert.new_stub(self._channel)

    async def _discover(self) -> str:
        credentials = grpc.ssl_channel_credentials(root_certificates=self._ca_pem)
        try:
            async with grpc.aio.secure_channel(
                self._control_plane, credentials, options=channel_options()
            ) as channel:
                info = await convert.new_control_stub(channel).GetServerInfo(
                    convert.server_info_request(), timeout=DISCOVERY_TIMEOUT_S
                )
        except grpc.aio.AioRpcError as exc:
            log.debug("agent address discovery failed: %s", exc.details())
            return ""
        return join_address(self._control_plane, info.agent_address) if info.agent_address else ""

    def Connect(self) -> Any:
        return self._require().Connect()

    def FetchBundle(self, request: Any, timeout: float | None = None) -> Any:
        return self._require().FetchBundle(request, timeout=timeout)

    def FetchResult(self, request: Any, timeout: float | None = None) -> Any:
        return self._require().FetchResult(request, timeout=timeout)

    def PushResult(self, request_iterator: Any, timeout: float | None = None) -> Any:
        return self._require().PushResult(request_iterator, timeout=timeout)

    def _require(self) -> Any:
        if self._stub is None:
            raise RuntimeError("AgentEndpoint.refresh() must run before the first call")
        return self._stub

    def _retire_channel(self) -> None:
        # A bundle download may still be using the old channel: let it finish.
        channel = self._channel
        if channel is not None:
            task = asyncio.ensure_future(channel.close(RETIRE_GRACE_S))
            self._retiring[channel] = task
            task.add_done_callback(lambda _: self._retiring.pop(channel, None))
            self._channel = None
            self._stub = None

    async def close(self) -> None:
        for channel, task in list(self._retiring.items()):
            await channel.close(None)  # ends the grace period at once
            await asyncio.gather(task, return_exceptions=True)
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = None
            self._stub = None
