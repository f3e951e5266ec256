"""Result stores: where a site keeps step results too large to travel inline.

Backends: ``filesystem`` (local disk, NFS, HPC scratch), ``s3``, ``gcs``, ``azure_blob``; each
put is atomic and idempotent per key, each read streams in bounded chunks and checks the
digest. Configured in the agent config's ``[result_stores.NAME]`` tables (``config.py``).
Not wired into the runner or the protocol yet: see docs/results.md.
"""

from __future__ import annotations

from agent.results._base import (
    ObjectInfo,
    Reader,
    ResultLocation,
    ResultStore,
    attempt_key,
    check_key,
    file_digest,
    key_segment,
)
from agent.results._errors import (
    DigestMismatch,
    InvalidKey,
    PresignUnsupported,
    ResultConflict,
    ResultNotFound,
    ResultStoreConfigError,
    ResultStoreError,
    ResultStoreUnavailable,
)
from agent.results.azure_blob import AzureBlobConfig, AzureBlobStore
from agent.results.config import (
    ResultStoresConfig,
    StoreConfig,
    build_store,
    parse_result_stores,
)
from agent.results.filesystem import FilesystemConfig, FilesystemStore
from agent.results.gcs import GcsConfig, GcsStore
from agent.results.s3 import S3Config, S3Store

__all__ = [
    "AzureBlobConfig",
    "AzureBlobStore",
    "DigestMismatch",
    "FilesystemConfig",
    "FilesystemStore",
    "GcsConfig",
    "GcsStore",
    "InvalidKey",
    "ObjectInfo",
    "PresignUnsupported",
    "Reader",
    "ResultConflict",
    "ResultLocation",
    "ResultNotFound",
    "ResultStore",
    "ResultStoreConfigError",
    "ResultStoreError",
    "ResultStoreUnavailable",
    "ResultStoresConfig",
    "S3Config",
    "S3Store",
    "StoreConfig",
    "attempt_key",
    "build_store",
    "check_key",
    "file_digest",
    "key_segment",
    "parse_result_stores",
]
