"""The agent's cache of code bundles, fetched by content hash from the control plane.

A bundle is downloaded through ``AgentService.FetchBundle`` at most once per hash at a time,
bounded in size, checked against its SHA-256 and unpacked into ``bundles/<sha256>/``. Unpacking
goes to a temporary directory that is renamed into place, so a crash never leaves a half
unpacked bundle that a later attempt would trust.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc

from agent import convert
from meridian.core.bundle import unpack_bundle
from meridian.core.errors import BundleError, ConnectionFailed, ValidationError

# (sha256, total_size, data): the first piece names the bundle and its size.
BundlePiece = tuple[str, int, bytes]
BundleSource = Callable[[str], AsyncIterator[BundlePiece]]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
MAX_DOWNLOADS_IN_FLIGHT = 4
# A 64 MiB bundle over a slow site link; a hung download fails the attempt instead of hanging.
DOWNLOAD_TIMEOUT_S = 600.0


class RpcBundleSource:
    """Streams a bundle's chunks from ``AgentService.FetchBundle``."""

    def __init__(self, stub: Any, max_in_flight: int = MAX_DOWNLOADS_IN_FLIGHT) -> None:
        self._stub = stub
        # The control plane refuses more concurrent downloads per agent than this.
        self._slots = asyncio.Semaphore(max_in_flight)

    async def __call__(self, sha256: str) -> AsyncIterator[BundlePiece]:
        try:
            async with self._slots:
                request = convert.fetch_bundle_request(sha256)
                async for chunk in self._stub.FetchBundle(request, timeout=DOWNLOAD_TIMEOUT_S):
                    yield convert.bundle_chunk_from_proto(chunk)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                raise ConnectionFailed(f"control plane unavailable: {exc.details()}") from exc
            raise BundleError(f"{exc.code().name}: {exc.details()}") from exc


class BundleCache:
    """Unpacked bundles under ``root``, fetched on first use."""

    def __init__(self, root: Path, source: BundleSource, max_size: int) -> None:
        self._root = Path(root)
        self._source = source
        self._max_size = max_size
        self._inflight: dict[str, asyncio.Task[Path]] = {}
        # Bundles known to be unpacked: later attempts skip even the stat.
        self._installed: set[str] = set()

    def path_for(self, sha256: str) -> Path:
        return self._root / sha256

    async def get(self, sha256: str) -> Path:
        """The directory holding the unpacked bundle, downloading it if needed."""
        sha256 = sha256.lower()
        if not _SHA256.match(sha256):
            raise ValidationError(f"bundle hash {sha256!r} is not a hex SHA-256 digest")
        final = self.path_for(sha256)
        if sha256 in self._installed:
            return final  # content-addressed and never removed while the agent runs
        if await asyncio.to_thread(final.is_dir):
            self._installed.add(sha256)
            return final
        task = self._inflight.get(sha256)
        if task is None:
            task = asyncio.ensure_future(self._download(sha256))
            self._inflight[sha256] = task
            task.add_done_callback(lambda _t: self._inflight.pop(sha256, None))
        # Shield: one waiter giving up (its attempt was cancelled) must not abort the download
        # other attempts are waiting for.
        return await asyncio.shield(task)

    async def _download(self, sha256: str) -> Path:
        data = bytearray()
        async for name, total, piece in self._source(sha256):
            if name and name != sha256:
                raise BundleError(f"control plane sent bundle {name} when {sha256} was asked for")
            if total > self._max_size:
                raise BundleError(
                    f"bundle {sha256} is {total} bytes, over the limit of {self._max_size}"
                )
            data += piece
            if len(data) > self._max_size:
                raise BundleError(f"bundle {sha256} is over the limit of {self._max_size} bytes")
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256:
            raise BundleError(f"bundle {sha256} arrived corrupt (its content hashes to {digest})")
        path = await asyncio.to_thread(self._install, sha256, bytes(data))
        self._installed.add(sha256)
        return path

    def _install(self, sha256: str, data: bytes) -> Path:
        self._root.mkdir(parents=True, exist_ok=True)
        final = self.path_for(sha256)
        staging = Path(tempfile.mkdtemp(prefix=f".{sha256[:12]}-", dir=self._root))
        try:
            unpack_bundle(data, staging, expected_sha256=sha256, max_size=self._max_size)
            try:
                os.rename(staging, final)
            except OSError:
                # Another process installed the same bundle first; content-addressed, so the
                # existing copy is identical.
                if not final.is_dir():
                    raise
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return final
