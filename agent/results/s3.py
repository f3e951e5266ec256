"""The ``s3`` result store: Amazon S3 (or an S3-compatible service) through boto3.

Small objects are one ``PutObject``; larger ones a multipart upload of ``part_size`` parts
(each part carries its own ``ChecksumSHA256``, so S3 rejects a part damaged in transit). The
whole object's sha256 is checked by the agent before ``CompleteMultipartUpload`` and kept in
the object's metadata (``x-amz-meta-sha256``). Both commits are atomic and sent with
``If-None-Match: *``, so an existing object is never replaced: a retried writer finds the
complete object and, if its digest matches, does nothing. A crashed writer leaves an
incomplete multipart upload, invisible to readers; ``abort_incomplete`` (or a bucket lifecycle
rule ``AbortIncompleteMultipartUpload``) removes it.

Credentials come from boto3's default chain (environment, profile, SSO, instance role, IRSA).
IAM actions needed on ``arn:aws:s3:::BUCKET/PREFIX*``: ``s3:PutObject``, ``s3:GetObject``,
``s3:DeleteObject``, ``s3:AbortMultipartUpload``; on ``arn:aws:s3:::BUCKET``: ``s3:ListBucket``
and ``s3:ListBucketMultipartUploads`` (with an ``s3:prefix`` condition if you like). With SSE-KMS,
also ``kms:GenerateDataKey`` and ``kms:Decrypt`` on the key. Presigned URLs are signed with the
agent's credentials and last at most 7 days (less with temporary credentials).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
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
    ResultNotFound,
    ResultStoreUnavailable,
)
from agent.results._object import PrefixedObjectStore

MIN_PART_SIZE = 5 * 1024 * 1024  # S3's smallest part but the last
MAX_PART_SIZE = 512 * 1024 * 1024
MAX_PARTS = 10_000
_DIGEST_META = "sha256"
_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})
_EXISTS = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"})


@dataclass(frozen=True)
class S3Config:
    bucket: str
    prefix: str = ""
    region: str | None = None
    endpoint_url: str | None = None
    profile: str | None = None
    part_size: int = 8 * 1024 * 1024
    # For emulators and tests; production uses the default credential chain.
    access_key_id: str | None = None
    secret_access_key: str | None = None


class S3Store(PrefixedObjectStore):
    """Objects in one bucket under a prefix (see the module docstring)."""

    def __init__(self, name: str, config: S3Config, client: Any = None) -> None:
        super().__init__(name, config.prefix)
        self._config = config
        self._client = client if client is not None else _client(config)
        import botocore.exceptions

        self._client_error = botocore.exceptions.ClientError
        self._boto_error = botocore.exceptions.BotoCoreError

    def put(self, key: str, source: Source, size: int, sha256: str) -> ResultLocation:
        check_put(key, size, sha256)
        location = self.location(key, size, sha256)
        if self._exists_same(location):
            return location
        with SourceStream(source, size, sha256, f"put {location.uri}") as stream:
            try:
                if size <= self._config.part_size:
                    self._put_single(location, stream)
                else:
                    self._put_multipart(location, stream)
            except self._client_error as exc:
                if _code(exc) in _EXISTS and self._exists_same(location):
                    return location  # another writer committed the same bytes first
                raise self._error(exc, location.uri) from None
            except self._boto_error as exc:
                raise ResultStoreUnavailable(f"put {location.uri}: {exc}") from None
        return location

    def _put_single(self, location: ResultLocation, stream: SourceStream) -> None:
        body = stream.read(location.size)  # at most part_size bytes
        self._client.put_object(
            Bucket=self._config.bucket,
            Key=self._full(location.key),
            Body=body,
            ChecksumSHA256=_b64(bytes.fromhex(location.sha256)),
            Metadata={_DIGEST_META: location.sha256},
            IfNoneMatch="*",
        )

    def _put_multipart(self, location: ResultLocation, stream: SourceStream) -> None:
        bucket, full = self._config.bucket, self._full(location.key)
        part_size = max(self._config.part_size, -(-location.size // MAX_PARTS))
        upload = self._client.create_multipart_upload(
            Bucket=bucket,
            Key=full,
            Metadata={_DIGEST_META: location.sha256},
            ChecksumAlgorithm="SHA256",
        )["UploadId"]
        parts: list[dict[str, Any]] = []
        try:
            number = 1
            while body := stream.read(part_size):  # the last read checks the whole digest
                checksum = _b64(hashlib.sha256(body).digest())
                answer = self._client.upload_part(
                    Bucket=bucket,
                    Key=full,
                    UploadId=upload,
                    PartNumber=number,
                    Body=body,
                    ChecksumSHA256=checksum,
                )
                parts.append(
                    {"ETag": answer["ETag"], "PartNumber": number, "ChecksumSHA256": checksum}
                )
                number += 1
            self._client.complete_multipart_upload(
                Bucket=bucket,
                Key=full,
                UploadId=upload,
                MultipartUpload={"Parts": parts},
                IfNoneMatch="*",
            )
        except BaseException:
            with contextlib.suppress(Exception):
                self._client.abort_multipart_upload(Bucket=bucket, Key=full, UploadId=upload)
            raise

    def open(
        self, location: ResultLocation, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> VerifiedChunks:
        self._own(location)
        check_chunk_size(chunk_size)
        try:
            body = self._client.get_object(
                Bucket=self._config.bucket, Key=self._full(location.key)
            )["Body"]
        except self._client_error as exc:
            raise self._error(exc, location.uri) from None
        return VerifiedChunks(body.iter_chunks(chunk_size), location, chunk_size, body.close)

    def stat(self, key: str) -> ObjectInfo:
        try:
            head = self._client.head_object(Bucket=self._config.bucket, Key=self._full(key))
        except self._client_error as exc:
            raise self._error(exc, self._uri(key)) from None
        return ObjectInfo(
            key,
            int(head["ContentLength"]),
            head["LastModified"],
            head.get("Metadata", {}).get(_DIGEST_META),
        )

    def delete(self, key: str) -> bool:
        try:
            self.stat(key)
        except ResultNotFound:
            return False
        try:
            self._client.delete_object(Bucket=self._config.bucket, Key=self._full(key))
        except self._client_error as exc:
            raise self._error(exc, self._uri(key)) from None
        return True

    def list(self, prefix: str = "", older_than: datetime | None = None) -> Iterator[ObjectInfo]:
        check_prefix(prefix)
        check_older_than(older_than)
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self._config.bucket, Prefix=self._config.prefix + prefix
        )
        try:
            for page in pages:
                for item in page.get("Contents", []):
                    if older_than is not None and item["LastModified"] >= older_than:
                        continue
                    key = item["Key"][len(self._config.prefix) :]
                    # No per-object HEAD for the digest: a listing for gc stays one call a page.
                    yield ObjectInfo(key, int(item["Size"]), item["LastModified"], None)
        except self._client_error as exc:
            raise self._error(exc, self._uri(prefix)) from None

    def abort_incomplete(self, older_than: datetime) -> int:
        check_older_than(older_than)
        pages = self._client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self._config.bucket, Prefix=self._config.prefix
        )
        aborted = 0
        for page in pages:
            for upload in page.get("Uploads", []):
                if upload["Initiated"] < older_than:
                    with contextlib.suppress(self._client_error):  # finished meanwhile
                        self._client.abort_multipart_upload(
                            Bucket=self._config.bucket,
                            Key=upload["Key"],
                            UploadId=upload["UploadId"],
                        )
                        aborted += 1
        return aborted

    def presign(self, location: ResultLocation, ttl: timedelta) -> str:
        self._own(location)
        url: str = self._client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self._config.bucket, "Key": self._full(location.key)},
            ExpiresIn=check_ttl(ttl),
        )
        return url

    def _uri(self, key: str) -> str:
        return f"s3://{self._config.bucket}/{self._config.prefix}{key}"

    def _error(self, exc: Any, uri: str) -> Exception:
        code = _code(exc)
        if code in _NOT_FOUND:
            return ResultNotFound(f"no object {uri} in store {self.name!r}")
        return ResultStoreUnavailable(f"{uri}: S3 answered {code}: {exc}")


def _code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _client(config: S3Config) -> Any:
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(profile_name=config.profile)
    return session.client(
        "s3",
        region_name=config.region,
        endpoint_url=config.endpoint_url,
        aws_access_key_id=config.access_key_id,
        aws_secret_access_key=config.secret_access_key,
        config=Config(retries={"mode": "standard", "max_attempts": 5}, signature_version="s3v4"),
    )
