"""The ``gcs`` result store: Google Cloud Storage through google-cloud-storage.

A put is a resumable upload (one request for objects up to ``chunk_size``) sent with the
precondition ``ifGenerationMatch=0``: the object appears only when its last chunk is committed,
and never replaces an existing object, so a retried writer finds the complete one and does
nothing if its digest matches. The agent checks the size and sha256 *before* it sends the last
chunk (``SourceStream``); the digest is kept in the object's metadata (``sha256``). Reads pin
the generation they started with. A crashed writer leaves an unfinished resumable session,
which GCS discards after a week (``abort_incomplete`` has nothing to do).

Credentials come from Application Default Credentials (workload identity, service account,
``gcloud auth application-default login``). Role needed on the bucket:
``roles/storage.objectUser`` (or ``storage.objects.create``, ``.get``, ``.list``, ``.delete``).
Presigned (V4 signed) URLs need a key that can sign: a service-account key file
(``signing_credentials_file``), or ADC of a service account plus
``roles/iam.serviceAccountTokenCreator`` on itself (signing through the IAM signBlob API).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
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
    PresignUnsupported,
    ResultNotFound,
    ResultStoreUnavailable,
)
from agent.results._object import PrefixedObjectStore

CHUNK_QUANTUM = 256 * 1024  # resumable chunks are multiples of 256 KiB
_DIGEST_META = "sha256"


@dataclass(frozen=True)
class GcsConfig:
    bucket: str
    prefix: str = ""
    project: str | None = None
    endpoint_url: str | None = None
    chunk_size: int = 8 * 1024 * 1024
    # Reads ask the service for at most this much per request (bounded memory).
    read_size: int = 8 * 1024 * 1024
    signing_credentials_file: str | None = None
    # Emulators only: send no credentials at all.
    anonymous: bool = False


class GcsStore(PrefixedObjectStore):
    """Objects in one bucket under a prefix (see the module docstring)."""

    def __init__(self, name: str, config: GcsConfig, client: Any = None) -> None:
        from google.api_core import exceptions

        super().__init__(name, config.prefix)
        self._config = config
        self._client = client if client is not None else _client(config)
        self._bucket = self._client.bucket(config.bucket)
        self._exc = exceptions

    def put(self, key: str, source: Source, size: int, sha256: str) -> ResultLocation:
        check_put(key, size, sha256)
        location = self.location(key, size, sha256)
        if self._exists_same(location):
            return location
        blob = self._bucket.blob(self._full(key), chunk_size=self._config.chunk_size)
        blob.metadata = {_DIGEST_META: sha256}
        with SourceStream(source, size, sha256, f"put {location.uri}") as stream:
            try:
                blob.upload_from_file(stream, size=size, if_generation_match=0, rewind=False)
            except self._exc.PreconditionFailed:
                if self._exists_same(location):
                    return location
                raise ResultStoreUnavailable(
                    f"put {location.uri}: precondition failed but no object exists"
                ) from None
            except self._exc.GoogleAPIError as exc:
                raise ResultStoreUnavailable(f"put {location.uri}: {exc}") from None
        return location

    def open(
        self, location: ResultLocation, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> VerifiedChunks:
        self._own(location)
        check_chunk_size(chunk_size)
        found = self._get(location.key)
        # Pin the generation: a reader never mixes bytes of two versions of a key.
        blob = self._bucket.blob(self._full(location.key), generation=found.generation)
        reader = blob.open("rb", chunk_size=self._config.read_size)
        return VerifiedChunks(
            iter(lambda: reader.read(chunk_size), b""), location, chunk_size, reader.close
        )

    def stat(self, key: str) -> ObjectInfo:
        return _info(key, self._get(key))

    def delete(self, key: str) -> bool:
        try:
            self._bucket.blob(self._full(key)).delete()
        except self._exc.NotFound:
            return False
        except self._exc.GoogleAPIError as exc:
            raise ResultStoreUnavailable(f"delete {self._uri(key)}: {exc}") from None
        return True

    def list(self, prefix: str = "", older_than: datetime | None = None) -> Iterator[ObjectInfo]:
        check_prefix(prefix)
        check_older_than(older_than)
        strip = len(self._config.prefix)
        try:
            for blob in self._client.list_blobs(
                self._config.bucket, prefix=self._config.prefix + prefix
            ):
                if older_than is None or blob.updated < older_than:
                    yield _info(blob.name[strip:], blob)
        except self._exc.GoogleAPIError as exc:
            raise ResultStoreUnavailable(f"list {self._uri(prefix)}: {exc}") from None

    def abort_incomplete(self, older_than: datetime) -> int:
        check_older_than(older_than)
        # Unfinished resumable sessions are invisible and expire in GCS after a week.
        return 0

    def presign(self, location: ResultLocation, ttl: timedelta) -> str:
        self._own(location)
        seconds = check_ttl(ttl)
        blob = self._bucket.blob(self._full(location.key))
        options: dict[str, Any] = {}
        if self._config.endpoint_url:
            options["api_access_endpoint"] = self._config.endpoint_url
        if self._config.signing_credentials_file:
            from google.oauth2 import service_account

            options["credentials"] = service_account.Credentials.from_service_account_file(
                self._config.signing_credentials_file
            )
        try:
            url: str = blob.generate_signed_url(
                version="v4", expiration=timedelta(seconds=seconds), method="GET", **options
            )
        except (AttributeError, TypeError, ValueError) as exc:
            raise PresignUnsupported(
                f"store {self.name!r} cannot sign URLs with its credentials ({exc}); set "
                "signing_credentials_file or use a service account"
            ) from None
        return url

    def _get(self, key: str) -> Any:
        try:
            blob = self._bucket.get_blob(self._full(key))
        except self._exc.GoogleAPIError as exc:
            raise ResultStoreUnavailable(f"stat {self._uri(key)}: {exc}") from None
        if blob is None:
            raise ResultNotFound(f"no object {self._uri(key)} in store {self.name!r}")
        return blob

    def _uri(self, key: str) -> str:
        return f"gs://{self._config.bucket}/{self._config.prefix}{key}"


def _info(key: str, blob: Any) -> ObjectInfo:
    return ObjectInfo(key, int(blob.size), blob.updated, (blob.metadata or {}).get(_DIGEST_META))


def _client(config: GcsConfig) -> Any:
    from google.cloud import storage  # type: ignore[attr-defined]

    options = {"api_endpoint": config.endpoint_url} if config.endpoint_url else None
    if config.anonymous:
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(
            project=config.project or "meridian-emulator",
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options=options,
        )
    return storage.Client(project=config.project, client_options=options)
