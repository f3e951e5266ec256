"""The ``filesystem`` result store: a directory on local disk, NFS or HPC scratch.

An object is the file ``ROOT/KEY``. A put writes ``ROOT/.incoming/<random>.part``, fsyncs it,
checks its size and sha256, then **hard-links** it to the final name (``link`` fails if the
name exists, so a concurrent or retried writer can never replace a complete object, unlike
``rename``), fsyncs the directory and removes the temporary name. A crash leaves at most a
``.part`` file, which readers never see and ``abort_incomplete`` removes.

Permissions: the agent's user needs read, write and execute on ROOT (create ``.incoming`` and
key directories). The filesystem must support hard links (POSIX filesystems, NFSv3/v4, Lustre,
GPFS do). Keys cannot name ``..`` or hidden segments, and every path is checked to stay under
ROOT after resolving symlinks. Presigned URLs are not supported.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent.results._base import (
    DEFAULT_CHUNK_SIZE,
    ObjectInfo,
    ResultLocation,
    Source,
    SourceStream,
    VerifiedChunks,
    check_chunk_size,
    check_key,
    check_older_than,
    check_prefix,
    check_put,
    file_digest,
)
from agent.results._errors import (
    InvalidKey,
    PresignUnsupported,
    ResultConflict,
    ResultNotFound,
    ResultStoreError,
)
from meridian.core.durable import fsync_dir

INCOMING = ".incoming"
_WRITE_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class FilesystemConfig:
    root: Path


class FilesystemStore:
    """Objects as files under a root directory (see the module docstring)."""

    def __init__(self, name: str, config: FilesystemConfig) -> None:
        self.name = name
        self._root = Path(config.root).resolve()
        self._incoming = self._root / INCOMING
        self._incoming.mkdir(parents=True, exist_ok=True)

    def location(self, key: str, size: int, sha256: str) -> ResultLocation:
        return ResultLocation(self.name, self._path(key).as_uri(), key, size, sha256)

    def put(self, key: str, source: Source, size: int, sha256: str) -> ResultLocation:
        check_put(key, size, sha256)
        final = self._path(key)
        location = self.location(key, size, sha256)
        if final.exists():
            self._same_or_conflict(final, location)
            return location
        tmp = self._incoming / f"{secrets.token_hex(16)}.part"
        try:
            self._write(tmp, SourceStream(source, size, sha256, f"put {location.uri}"))
            final.parent.mkdir(parents=True, exist_ok=True)
            self._inside_root(final)
            try:
                os.link(tmp, final)
            except FileExistsError:  # another writer committed first
                self._same_or_conflict(final, location)
                return location
            fsync_dir(final.parent)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return location

    def open(
        self, location: ResultLocation, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> VerifiedChunks:
        path = self._own(location)
        check_chunk_size(chunk_size)
        try:
            f = open(path, "rb")  # noqa: SIM115 (closed by the reader)
        except FileNotFoundError:
            raise ResultNotFound(f"no object {location.uri} in store {self.name!r}") from None
        return VerifiedChunks(iter(lambda: f.read(chunk_size), b""), location, chunk_size, f.close)

    def stat(self, key: str) -> ObjectInfo:
        path = self._path(key)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise ResultNotFound(f"no object {key!r} in store {self.name!r}") from None
        return ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC), None)

    def delete(self, key: str) -> bool:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            return False
        return True

    def list(self, prefix: str = "", older_than: datetime | None = None) -> Iterator[ObjectInfo]:
        check_prefix(prefix)
        check_older_than(older_than)
        directory, _, _ = prefix.rpartition("/")
        base = self._root / directory if directory else self._root
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for filename in sorted(filenames):
                key = Path(dirpath, filename).relative_to(self._root).as_posix()
                if filename.startswith(".") or not key.startswith(prefix):
                    continue
                with contextlib.suppress(FileNotFoundError):  # deleted while listing
                    info = self.stat(key)
                    if older_than is None or info.modified < older_than:
                        yield info

    def abort_incomplete(self, older_than: datetime) -> int:
        check_older_than(older_than)
        removed = 0
        for part in self._incoming.glob("*.part"):
            with contextlib.suppress(FileNotFoundError):
                modified = datetime.fromtimestamp(part.stat().st_mtime, UTC)
                if modified < older_than:
                    part.unlink()
                    removed += 1
        return removed

    def presign(self, location: ResultLocation, ttl: timedelta) -> str:
        raise PresignUnsupported(
            f"store {self.name!r} is a filesystem: it cannot hand out URLs; readers in other "
            "environments need a transfer"
        )

    def _path(self, key: str) -> Path:
        return self._root / check_key(key)

    def _inside_root(self, path: Path) -> None:
        # Keys cannot contain "..", but a symlinked directory inside ROOT could still point out.
        if not path.parent.resolve().is_relative_to(self._root):
            raise InvalidKey(f"object path {path} leaves the store's root {self._root}")

    def _own(self, location: ResultLocation) -> Path:
        if location.store != self.name or location.uri != self._path(location.key).as_uri():
            raise ResultStoreError(f"{location.uri} is not an object of store {self.name!r}")
        return self._path(location.key)

    def _same_or_conflict(self, path: Path, location: ResultLocation) -> None:
        self._inside_root(path)
        if path.stat().st_size != location.size or file_digest(path) != location.sha256:
            raise ResultConflict(
                f"{location.uri} already holds a different object; keys are per attempt, so a "
                "second writer with other bytes is a bug"
            )

    def _write(self, tmp: Path, stream: SourceStream) -> None:
        with stream, open(tmp, "xb") as out:
            while chunk := stream.read(_WRITE_CHUNK):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
