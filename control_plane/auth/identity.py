"""Who is calling: the agent identity carried by a verified client certificate.

gRPC puts the peer's certificate (already verified against the CA by the TLS stack) into
``ServicerContext.auth_context()`` under ``x509_pem_cert``. This module turns that entry into an
:class:`AgentIdentity` by reading the SPIFFE-style URI SAN the CA wrote (``ca.py``). It trusts
the TLS layer for verification and only parses; a certificate without our URI is "no agent".
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from control_plane.auth.ca import SPIFFE_PREFIX

PEER_CERT_KEY = "x509_pem_cert"
_URI_RE = re.compile(
    re.escape(SPIFFE_PREFIX)
    + r"(?P<env>[A-Za-z0-9][A-Za-z0-9._-]{0,62})/agent/(?P<agent>[A-Za-z0-9][A-Za-z0-9._-]{0,62})$"
)


@dataclass(frozen=True)
class AgentIdentity:
    """An authenticated agent: its id, its environment, and the certificate it presented."""

    agent_id: str
    environment: str
    fingerprint: str  # lowercase hex SHA-256 of the certificate DER, for revocation checks
    not_after: datetime  # UTC
    not_before: datetime  # UTC; the CA back-dates it by ``ca.CLOCK_SKEW``


def identity_from_auth_context(
    auth_context: Mapping[str, Iterable[bytes]],
) -> AgentIdentity | None:
    """Return the agent identity of the peer, or ``None`` if it presented no agent certificate.

    ``auth_context`` is what ``grpc.ServicerContext.auth_context()`` (or the aio equivalent)
    returns. A certificate that parses but carries no Meridian agent URI yields ``None`` too:
    the caller treats both as "not an agent" and refuses agent-only calls.
    """
    # gRPC gives the leaf first; any further entries would be the rest of the chain.
    leaf = next(iter(auth_context.get(PEER_CERT_KEY) or ()), None)
    if not leaf:
        return None
    try:
        cert = x509.load_pem_x509_certificate(bytes(leaf))
    except ValueError:
        return None
    return identity_from_certificate(cert)


def identity_from_certificate(cert: x509.Certificate) -> AgentIdentity | None:
    """Read the agent identity from a certificate issued by :mod:`control_plane.auth.ca`."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        match = _URI_RE.match(uri)
        if match is not None:
            der = cert.public_bytes(serialization.Encoding.DER)
            return AgentIdentity(
                agent_id=match["agent"],
                environment=match["env"],
                fingerprint=hashlib.sha256(der).hexdigest(),
                not_after=cert.not_valid_after_utc,
                not_before=cert.not_valid_before_utc,
            )
    return None
