"""Building the agent's mutually authenticated gRPC channel to the control plane.

Keepalive pings detect a dead peer behind NATs and load balancers that silently drop idle
streams; message limits match the largest frame the protocol allows.
"""

from __future__ import annotations

import grpc

MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def channel_options(max_message_bytes: int = MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    return [
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        # The Connect stream may sit idle between heartbeats; keep pinging regardless.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        # Our own loop retries with jittered backoff; keep gRPC's reconnects from lagging it.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 5_000),
    ]


def secure_channel(
    target: str, *, ca_pem: bytes, key_pem: bytes, cert_pem: bytes
) -> grpc.aio.Channel:
    """An asyncio channel presenting the agent's certificate and trusting only ``ca_pem``."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem
    )
    return grpc.aio.secure_channel(target, credentials, options=channel_options())
