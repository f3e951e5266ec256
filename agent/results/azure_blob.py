"""The ``azure_blob`` result store: Azure Blob Storage through azure-storage-blob.

A put stages the bytes as blocks (each with a transactional MD5 the service checks) under
block ids unique to this put, checks the whole object's size and sha256, then commits the block
list in one atomic call with ``If-None-Match: *``: the blob appears complete or not at all and
never replaces an existing one, so a retried writer finds the complete blob and does nothing if
its digest (metadata ``sha256``) matches. A crashed writer leaves uncommitted blocks, which are
invisible and which the service discards after seven days (``abort_incomplete`` has nothing to
do).

Credentials: ``DefaultAzureCredential`` (managed identity, workload identity, environment,
Azure CLI) with ``account_url``, or a ``connection_string`` (account key; Azurite). Azure RBAC:
**Storage Blob Data Contributor** on the container (read, write, delete, list; it includes
``generateUserDelegationKey``, which presigned URLs need with Entra ID credentials). Presigned
URLs are read-only SAS tokens: user-delegation SAS with Entra ID, service SAS with an account
key.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from agent.results._base import (
    DEFAULT_CHUNK_SIZE,
    ObjectInfo,
    ResultLocation,
    Source,
    SourceStream,
    VerifiedChunks,
    check_chunk_size,
    check_older_than,
    check_prefix,
    check_put,
    check_ttl,
)
from agent.results._errors import (
    ResultNotFound,
    ResultStoreUnavailable,
)
from agent.results._object import PrefixedObjectStore

MAX_BLOCK_SIZE = 100 * 1024 * 1024
MAX_BLOCKS = 50_000
_DIGEST_META = "sha256"
_EXISTS = frozenset({"BlobAlreadyExists", "ConditionNotMet"})


@dataclass(frozen=True)
class AzureBlobConfig:
    container: str
    account_url: str | None = None
    connection_string: str | None = None
    prefix: str = ""
    block_size: int = 8 * 1024 * 1024
    # Reads ask the service for at most this much per request (bounded memory).
    read_size: int = 4 * 1024 * 1024


class AzureBlobStore(PrefixedObjectStore):
    """Block blobs in one container under a prefix (see the module docstring)."""

    def __init__(self, name: str, config: AzureBlobConfig, service: Any = None) -> None:
        from azure.core import exceptions

        super().__init__(name, config.prefix)
        self._config = config
        self._service = service if service is not None else _service(config)
        self._container = self._service.get_container_client(config.container)
        self._exc = exceptions

    def put(self, key: str, source: Source, size: int, sha256: str) -> ResultLocation:
        from azure.storage.blob import BlobBlock

        check_put(key, size, sha256)
        location = self.location(key, size, sha256)
        if self._exists_same(location):
            return location
        blob = self._container.get_blob_client(self._full(key))
        block_size = max(self._config.block_size, -(-size // MAX_BLOCKS))
        # Uncommitted blocks of a blob share one namespace: ids unique to this put keep a
        # concurrent writer's blocks out of our list.
        nonce = secrets.token_hex(8)
        blocks: list[Any] = []
        with SourceStream(source, size, sha256, f"put {location.uri}") as stream:
            try:
                while data := stream.read(block_size):  # the last read checks the digest
                    block_id = base64.b64encode(f"{nonce}-{len(blocks):06d}".encode()).decode()
                    blob.stage_block(block_id, data, validate_content=True)
                    blocks.append(BlobBlock(block_id=block_id))
                blob.commit_block_list(
                    blocks, metadata={_DIGEST_META: sha256}, headers={"If-None-Match": "*"}
                )
            except self._exc.HttpResponseError as exc:
                code = getattr(exc, "error_code", None)
                exists = code in _EXISTS or exc.status_code in (409, 412)
                if exists and self._exists_same(location):
                    return location
                raise ResultStoreUnavailable(f"put {location.uri}: {exc.message}") from None
            except self._exc.AzureError as exc:
                raise ResultStoreUnavailable(f"put {location.uri}: {exc}") from None
        return location

    def open(
        self, location: ResultLocation, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> VerifiedChunks:
        self._own(location)
        check_chunk_size(chunk_size)
        blob = self._container.get_blob_client(self._full(location.key))
        try:
            downloader = blob.download_blob(max_concurrency=1)
        except self._exc.ResourceNotFoundError:
            raise ResultNotFound(f"no object {location.uri} in store {self.name!r}") from None
        except self._exc.AzureError as exc:
            raise ResultStoreUnavailable(f"open {location.uri}: {exc}") from None
        return VerifiedChunks(downloader.chunks(), location, chunk_size)

    def stat(self, key: str) -> ObjectInfo:
        blob = self._container.get_blob_client(self._full(key))
        try:
            props = blob.get_blob_properties()
        except self._exc.ResourceNotFoundError:
            raise ResultNotFound(f"no object {self._uri(key)} in store {self.name!r}") from None
        except self._exc.AzureError as exc:
            raise ResultStoreUnavailable(f"stat {self._uri(key)}: {exc}") from None
        return _info(key, props)

    def delete(self, key: str) -> bool:
        try:
            self._container.get_blob_client(self._full(key)).delete_blob()
        except self._exc.ResourceNotFoundError:
            return False
        except self._exc.AzureError as exc:
            raise ResultStoreUnavailable(f"delete {self._uri(key)}: {exc}") from None
        return True

    def list(self, prefix: str = "", older_than: datetime | None = None) -> Iterator[ObjectInfo]:
        check_prefix(prefix)
        check_older_than(older_than)
        strip = len(self._config.prefix)
        try:
            for props in self._container.list_blobs(
                name_starts_with=self._config.prefix + prefix, include=["metadata"]
            ):
                if older_than is None or props.last_modified < older_than:
                    yield _info(props.name[strip:], props)
        except self._exc.AzureError as exc:
            raise ResultStoreUnavailable(f"list {self._uri(prefix)}: {exc}") from None

    def abort_incomplete(self, older_than: datetime) -> int:
        check_older_than(older_than)
        # Uncommitted blocks are invisible; the service discards them after seven days.
        return 0

    def presign(self, location: ResultLocation, ttl: timedelta) -> str:
        from azure.storage.blob import BlobSasPermissions, generate_blob_sas

        self._own(location)
        expiry = datetime.now(UTC) + timedelta(seconds=check_ttl(ttl))
        blob = self._container.get_blob_client(self._full(location.key))
        key = getattr(self._service.credential, "account_key", None)
        auth: dict[str, Any] = {"account_key": key}
        if key is None:  # Entra ID: sign with a user delegation key
            start = datetime.now(UTC) - timedelta(minutes=5)
            auth = {"user_delegation_key": self._service.get_user_delegation_key(start, expiry)}
        sas = generate_blob_sas(
            account_name=self._service.account_name,
            container_name=self._config.container,
            blob_name=self._full(location.key),
            permission=BlobSasPermissions(read=True),
            expiry=expiry,
            **auth,
        )
        return f"{blob.url}?{sas}"

    def _uri(self, key: str) -> str:
        url: str = self._container.get_blob_client(self._config.prefix + key).url
        return url


def _info(key: str, props: Any) -> ObjectInfo:
    return ObjectInfo(
        key, int(props.size), props.last_modified, (props.metadata or {}).get(_DIGEST_META)
    )


def _service(config: AzureBlobConfig) -> Any:
    from azure.storage.blob import BlobServiceClient

    sizes: dict[str, Any] = {
        "max_single_get_size": config.read_size,
        "max_chunk_get_size": config.read_size,
    }
    if config.connection_string:
        return BlobServiceClient.from_connection_string(config.connection_string, **sizes)
    from azure.identity import DefaultAzureCredential

    assert config.account_url is not None  # config.py requires one of the two
    return BlobServiceClient(config.account_url, credential=DefaultAzureCredential(), **sizes)
