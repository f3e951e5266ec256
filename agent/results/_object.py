"""What the bucket-like stores (S3, GCS, Azure Blob) share: keys under a prefix, locations
that name the store, and the check that makes a repeated put idempotent."""

from __future__ import annotations

from agent.results._base import ObjectInfo, ResultLocation, check_key
from agent.results._errors import ResultConflict, ResultNotFound, ResultStoreError


class PrefixedObjectStore:
    """Base of a store whose objects live under ``prefix`` in one bucket or container.

    Subclasses give ``stat`` (what is stored under a key) and ``_uri`` (how a key is named
    outside the store)."""

    def __init__(self, name: str, prefix: str) -> None:
        self.name = name
        self._prefix = prefix

    def stat(self, key: str) -> ObjectInfo:
        raise NotImplementedError

    def _uri(self, key: str) -> str:
        raise NotImplementedError

    def location(self, key: str, size: int, sha256: str) -> ResultLocation:
        return ResultLocation(self.name, self._uri(key), key, size, sha256)

    def _exists_same(self, location: ResultLocation) -> bool:
        """Whether the complete object is already there (a retried put); a different object
        under the same key is a conflict, never overwritten."""
        try:
            info = self.stat(location.key)
        except ResultNotFound:
            return False
        if info.size != location.size or info.sha256 != location.sha256:
            raise ResultConflict(
                f"{location.uri} already holds a different object (size {info.size}, sha256 "
                f"{info.sha256}); keys are per attempt, so this is a bug"
            )
        return True

    def _full(self, key: str) -> str:
        return self._prefix + check_key(key)

    def _own(self, location: ResultLocation) -> None:
        if location.store != self.name or location.uri != self._uri(check_key(location.key)):
            raise ResultStoreError(f"{location.uri} is not an object of store {self.name!r}")
