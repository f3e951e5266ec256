"""Automatic certificate rotation, agent side.

The control plane says in every Welcome (and in every renewal answer) how long until the
certificate should be rotated. When that time comes the agent makes a new key pair, sends only
the CSR over its stream, and on the answer saves the pair (``identity.save_rotated``) and tells
the endpoint to present it from the next connection on. The open stream is not touched, so
running steps never notice; the server closes a stream whose certificate expires and the agent
reconnects with the new one.

A refusal, a lost answer or a broken stream only delay the next try: the old certificate stays
on disk and valid until it expires, and the control plane accepts it until then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from agent.actions import CertificateAction
from agent.identity import generate_key_and_csr, save_rotated
from meridian.core.errors import ValidationError

log = logging.getLogger("meridian.agent.rotation")

# Ask again when no answer came back within this long (the frame or its answer was lost).
ANSWER_TIMEOUT_S = 60.0
# Never ask more often than this, whatever a server says.
MIN_RETRY_S = 1.0


class CertificateUser(Protocol):
    def use_certificate(self, key_pem: bytes, cert_pem: bytes) -> None: ...


class CertificateRotator:
    """Decides when to renew, makes the CSR, and installs the certificate that comes back."""

    def __init__(
        self,
        data_dir: Path,
        endpoint: CertificateUser,
        name: str,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._data_dir = Path(data_dir)
        self._endpoint = endpoint
        self._name = name
        self._clock = clock
        self._due_at: float | None = None
        self._pending_key: bytes | None = None
        self._changed = asyncio.Event()
        self.rotations = 0

    @property
    def due_in_s(self) -> float | None:
        """Seconds until the next renewal request (``None``: rotation is off)."""
        return None if self._due_at is None else self._due_at - self._clock()

    def schedule(self, in_s: float) -> None:
        """Renew ``in_s`` seconds from now; ``in_s <= 0`` means the server does not rotate."""
        self._due_at = self._clock() + in_s if in_s > 0 else None
        self._changed.set()

    async def wait_due(self) -> None:
        """Return once a renewal is due (rescheduling while waiting is taken into account)."""
        while True:
            self._changed.clear()
            if self._due_at is None:
                await self._changed.wait()
                continue
            remaining = self._due_at - self._clock()
            if remaining <= 0:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._changed.wait()

    def request(self) -> bytes:
        """A CSR for a fresh key pair; the key stays here until its certificate arrives."""
        self._pending_key, csr = generate_key_and_csr(self._name)
        self._due_at = self._clock() + ANSWER_TIMEOUT_S
        return csr

    def answer(self, action: CertificateAction) -> None:
        """Install the renewed certificate, or schedule the next try after a refusal."""
        key, self._pending_key = self._pending_key, None
        if action.refused or not action.certificate_pem:
            log.warning("certificate renewal refused: %s", action.refused or "no certificate")
            self.schedule(max(action.retry_in_s, MIN_RETRY_S))
            return
        if key is None:
            log.warning("ignoring a certificate this agent did not ask for")
            return
        try:
            save_rotated(self._data_dir, key, action.certificate_pem)
        except (ValidationError, OSError) as exc:
            log.error("could not install the rotated certificate: %s", exc)
            self.schedule(MIN_RETRY_S * 10)
            return
        self._endpoint.use_certificate(key, action.certificate_pem)
        self.rotations += 1
        log.info("rotated the agent certificate; next rotation in %.0fs", action.renew_in_s)
        self.schedule(max(action.renew_in_s, MIN_RETRY_S))
