"""The result-store contract, object keys, and the digest-checking streams every backend uses.

A store writes an object under a key **atomically and idempotently**: readers see either no
object or the complete one, a second ``put`` of the same bytes is a no-op, and a ``put`` whose
bytes do not match the announced size and sha256 keeps nothing. ``SourceStream`` enforces the
size and digest *before it hands out the last byte*, so a backend whose upload commits with its
last chunk (a GCS resumable upload) never commits a wrong object. Reads stream in bounded chunks
through ``VerifiedChunks``, which checks the size and digest before yielding the last chunk.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Protocol, runtime_checkable

from agent.results._errors import DigestMismatch, InvalidKey
from meridian.core.errors import ValidationError

MAX_KEY_LENGTH = 1024
MAX_KEY_SEGMENTS = 32
MAX_SEGMENT_LENGTH = 255
DEFAULT_CHUNK_SIZE = 1024 * 1024
MAX_CHUNK_SIZE = 64 * 1024 * 1024
MIN_PRESIGN_TTL = timedelta(seconds=1)
MAX_PRESIGN_TTL = timedelta(days=7)  # S3 SigV4 and GCS V4 signatures last at most a week
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_=+@~-][A-Za-z0-9._=+@~-]*$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_SAFE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._=+@-")

Source = str | os.PathLike[str] | Iterable[bytes]


@dataclass(frozen=True)
class ResultLocation:
    """A complete object: the store's name, its URI, its key and what its bytes must be."""

    store: str
    uri: str
    key: str
    size: int
    sha256: str


@dataclass(frozen=True)
class ObjectInfo:
    """What a store knows of an object; ``sha256`` is None where the backend keeps none."""

    key: str
    size: int
    modified: datetime
    sha256: str | None


@runtime_checkable
class ResultStore(Protocol):
    """A site's store for step results (filesystem, S3, GCS, Azure Blob)."""

    name: str

    def put(self, key: str, source: Source, size: int, sha256: str) -> ResultLocation:
        """Store ``size`` bytes with digest ``sha256`` under ``key``, atomically.

        ``source`` is a file path or an iterable of byte chunks. An existing complete object
        with the same digest makes this a no-op.

        Raises:
            InvalidKey, DigestMismatch, ResultConflict, ResultStoreUnavailable.
        """
        ...

    def open(self, location: ResultLocation, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Reader:
        """Stream the object in chunks of at most ``chunk_size`` bytes, checking its digest."""
        ...

    def stat(self, key: str) -> ObjectInfo:
        """Describe the complete object under ``key`` or raise ``ResultNotFound``."""
        ...

    def delete(self, key: str) -> bool:
        """Delete ``key``; False when there was nothing to delete."""
        ...

    def list(self, prefix: str = "", older_than: datetime | None = None) -> Iterator[ObjectInfo]:
        """Complete objects under ``prefix``, only those modified before ``older_than`` if set."""
        ...

    def abort_incomplete(self, older_than: datetime) -> int:
        """Discard uploads left unfinished (a crashed writer) started before ``older_than``."""
        ...

    def presign(self, location: ResultLocation, ttl: timedelta) -> str:
        """A URL that lets plain HTTP GET the object for ``ttl``, or ``PresignUnsupported``."""
        ...

    def location(self, key: str, size: int, sha256: str) -> ResultLocation:
        """The location of ``key`` in this store (no I/O)."""
        ...


class Reader(Protocol):
    """An open object: iterate for chunks; close (or ``with``) to release the connection."""

    def __iter__(self) -> Iterator[bytes]: ...

    def close(self) -> None: ...

    def __enter__(self) -> Reader: ...

    def __exit__(self, *exc: object) -> None: ...


def check_key(key: str) -> str:
    """Return ``key`` if it is a valid object key, else raise ``InvalidKey``.

    Keys are ``/``-separated segments of letters, digits and ``. _ = + @ ~ -``; a segment never
    starts with ``.``, so ``..`` and hidden names (the filesystem store's ``.incoming``) cannot
    be reached.
    """
    if not isinstance(key, str) or not key:
        raise InvalidKey("an object key must be a non-empty string")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidKey(f"object key is longer than {MAX_KEY_LENGTH} characters")
    segments = key.split("/")
    if len(segments) > MAX_KEY_SEGMENTS:
        raise InvalidKey(f"object key has more than {MAX_KEY_SEGMENTS} segments")
    for segment in segments:
        if len(segment) > MAX_SEGMENT_LENGTH or not _SEGMENT_RE.match(segment):
            raise InvalidKey(
                f"object key {key[:80]!r}: segment {segment[:80]!r} must be 1-"
                f"{MAX_SEGMENT_LENGTH} letters, digits or '._=+@~-', not starting with '.'"
            )
    return key


def check_prefix(prefix: str) -> str:
    """A listing prefix: empty, or a key with an optional trailing ``/``."""
    if prefix:
        check_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


def key_segment(text: str) -> str:
    """Encode any text as one valid key segment (``~HH`` for each byte outside the set)."""
    encoded = "".join(
        c if c in _SAFE_CHARS else "".join(f"~{b:02X}" for b in c.encode()) for c in text
    )
    if not encoded or encoded.startswith("."):
        encoded = "~2E" + encoded[1:] if encoded else "~"
    return encoded[:MAX_SEGMENT_LENGTH]


def attempt_key(run_id: str, step_key: str, attempt: int | str, name: str = "result") -> str:
    """The key of what one attempt of a step wrote: ``runs/RUN/STEP/ATTEMPT/NAME``.

    ``attempt`` is the attempt's id (the agent uses it: unique even when a resumed run numbers
    a step's attempts again) or its number."""
    return check_key(
        f"runs/{key_segment(run_id)}/{key_segment(step_key)}/{key_segment(str(attempt))}/{name}"
    )


def check_put(key: str, size: int, sha256: str) -> None:
    check_key(key)
    if type(size) is not int or size < 0:
        raise ValidationError(f"size {size!r} must be a non-negative integer")
    if not isinstance(sha256, str) or not _SHA256_RE.match(sha256):
        raise ValidationError("sha256 must be 64 lowercase hexadecimal characters")


def check_older_than(older_than: datetime | None) -> datetime | None:
    """Ages are compared with the services' timezone-aware times: a naive time is a bug."""
    if older_than is not None and older_than.tzinfo is None:
        raise ValidationError("older_than must be timezone-aware (e.g. datetime.now(UTC))")
    return older_than


def check_chunk_size(chunk_size: int) -> int:
    if type(chunk_size) is not int or not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk_size must be from 1 to {MAX_CHUNK_SIZE} bytes")
    return chunk_size


def check_ttl(ttl: timedelta) -> int:
    if not MIN_PRESIGN_TTL <= ttl <= MAX_PRESIGN_TTL:
        raise ValueError(f"presign ttl must be from {MIN_PRESIGN_TTL} to {MAX_PRESIGN_TTL}")
    return int(ttl.total_seconds())


class SourceStream:
    """A readable stream over a put's source that enforces its announced size and sha256.

    The read that would return the last byte first checks that the source has no more bytes
    and that the digest matches, and raises ``DigestMismatch`` instead of returning it.
    """

    def __init__(self, source: Source, size: int, sha256: str, label: str) -> None:
        self._size = size
        self._sha256 = sha256
        self._label = label
        self._hash = hashlib.sha256()
        self._pos = 0
        self._pending = b""
        self._offset = 0
        self._verified = False
        self._file: IO[bytes] | None = None
        self._chunks: Iterator[bytes] | None = None
        if isinstance(source, str | os.PathLike):
            self._file = open(Path(source), "rb")  # noqa: SIM115 (closed by close())
        else:
            self._chunks = iter(source)

    def tell(self) -> int:
        return self._pos

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self._size - self._pos
        n = min(n, self._size - self._pos)
        data = self._pull(n) if n > 0 else b""
        if len(data) < n:
            self._fail(f"the source ended after {self._pos + len(data)} of {self._size} bytes")
        self._hash.update(data)
        self._pos += len(data)
        if self._pos == self._size and not self._verified:
            if self._pull(1):
                self._fail(f"the source has more than the announced {self._size} bytes")
            actual = self._hash.hexdigest()
            if actual != self._sha256:
                self._fail(f"sha256 is {actual}, announced {self._sha256}")
            self._verified = True
        return data

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def _pull(self, n: int) -> bytes:
        if self._file is not None:
            parts = []
            while n > 0:
                part = self._file.read(n)
                if not part:
                    break
                parts.append(part)
                n -= len(part)
            return b"".join(parts)
        assert self._chunks is not None
        # Take slices of the current chunk without copying the rest of it each time: a
        # source may yield one huge chunk.
        parts = []
        while n > 0:
            if self._offset >= len(self._pending):
                chunk = next(self._chunks, None)
                if chunk is None:
                    break
                if not isinstance(chunk, bytes | bytearray | memoryview):
                    raise TypeError(f"a put source yields bytes, not {type(chunk).__name__}")
                self._pending, self._offset = bytes(chunk), 0
                continue
            part = self._pending[self._offset : self._offset + n]
            self._offset += len(part)
            parts.append(part)
            n -= len(part)
        return b"".join(parts)

    def _fail(self, why: str) -> None:
        raise DigestMismatch(f"{self._label}: {why}; nothing was stored")

    def __enter__(self) -> SourceStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class VerifiedChunks:
    """Re-chunks a backend's byte iterator to at most ``chunk_size`` and checks the digest.

    The last chunk is yielded only after the total size and sha256 match the location.
    """

    def __init__(
        self,
        raw: Iterator[bytes],
        location: ResultLocation,
        chunk_size: int,
        close: Callable[[], None] = lambda: None,
    ) -> None:
        self._raw = raw
        self._location = location
        self._chunk_size = check_chunk_size(chunk_size)
        self._close = close

    def __iter__(self) -> Iterator[bytes]:
        digest = hashlib.sha256()
        seen = 0
        expected = self._location.size
        for block in self._raw:
            for start in range(0, len(block), self._chunk_size):
                chunk = block[start : start + self._chunk_size]
                seen += len(chunk)
                digest.update(chunk)
                if seen > expected:
                    self._mismatch(f"more than the expected {expected} bytes")
                if seen == expected:
                    self._check(digest)
                yield chunk
        if seen < expected:
            self._mismatch(f"{seen} bytes, expected {expected}")
        if expected == 0:
            self._check(digest)

    def _check(self, digest: hashlib._Hash) -> None:
        if digest.hexdigest() != self._location.sha256:
            self._mismatch(f"sha256 {digest.hexdigest()}, expected {self._location.sha256}")

    def _mismatch(self, why: str) -> None:
        raise DigestMismatch(f"reading {self._location.uri}: {why}")

    def close(self) -> None:
        self._close()

    def __enter__(self) -> VerifiedChunks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def file_digest(path: str | os.PathLike[str], chunk_size: int = DEFAULT_CHUNK_SIZE) -> str:
    """The sha256 of a file, read in bounded chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
