"""One fixture per backend, each a real store against a real emulator (or a temp directory).

``backend`` names a store factory; ``store_for`` builds a store named ``results`` with a fresh
prefix per test, so tests never see each other's objects.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.results import (
    AzureBlobConfig,
    AzureBlobStore,
    FilesystemConfig,
    FilesystemStore,
    GcsConfig,
    GcsStore,
    ResultStore,
    S3Config,
    S3Store,
)
from tests.agent.results import emulators

BACKENDS = ["filesystem", "s3", "gcs", "azure_blob"]
BUCKET = "meridian-results"
REGION = "us-east-1"

StoreFactory = Callable[..., ResultStore]


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pytest.importorskip("boto3", reason="install meridian-orchestrator[aws]")
    import boto3

    with emulators.moto_s3(tmp_path_factory.mktemp("moto")) as emulator:
        boto3.client(
            "s3",
            region_name=REGION,
            endpoint_url=emulator.url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        ).create_bucket(Bucket=BUCKET)
        yield emulator.url


@pytest.fixture(scope="session")
def gcs_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pytest.importorskip("google.cloud.storage", reason="install meridian-orchestrator[gcp]")
    with emulators.gcs_emulator(tmp_path_factory.mktemp("gcs"), BUCKET) as emulator:
        yield emulator.url


@pytest.fixture(scope="session")
def azurite_connection(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pytest.importorskip("azure.storage.blob", reason="install meridian-orchestrator[azure]")
    reason = emulators.azurite_missing_reason()
    if reason is not None:
        pytest.skip(reason)
    from azure.storage.blob import BlobServiceClient

    with emulators.azurite(tmp_path_factory.mktemp("azurite")) as emulator:
        connection = emulators.azurite_connection_string(emulator.url)
        BlobServiceClient.from_connection_string(connection).create_container(BUCKET)
        yield connection


def s3_config(endpoint: str, prefix: str, **changes: Any) -> S3Config:
    options: dict[str, Any] = {
        "bucket": BUCKET,
        "prefix": prefix,
        "region": REGION,
        "endpoint_url": endpoint,
        "access_key_id": "testing",
        "secret_access_key": "testing",
        "part_size": 5 * 1024 * 1024,
    }
    options.update(changes)
    return S3Config(**options)


def gcs_config(endpoint: str, prefix: str, **changes: Any) -> GcsConfig:
    options: dict[str, Any] = {
        "bucket": BUCKET,
        "prefix": prefix,
        "endpoint_url": endpoint,
        "anonymous": True,
        "chunk_size": 4 * 1024 * 1024,
        "read_size": 4 * 1024 * 1024,
    }
    options.update(changes)
    return GcsConfig(**options)


def azure_config(connection: str, prefix: str, **changes: Any) -> AzureBlobConfig:
    options: dict[str, Any] = {
        "container": BUCKET,
        "prefix": prefix,
        "connection_string": connection,
        "block_size": 4 * 1024 * 1024,
        "read_size": 1024 * 1024,
    }
    options.update(changes)
    return AzureBlobConfig(**options)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_for(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Build a store of this test's backend; every call shares the test's prefix (or root)."""
    prefix = f"t-{secrets.token_hex(6)}/"
    if backend == "filesystem":
        return lambda name, **_: FilesystemStore(name, FilesystemConfig(tmp_path / "root"))
    if backend == "s3":
        endpoint = request.getfixturevalue("s3_endpoint")
        return lambda name, **kw: S3Store(name, s3_config(endpoint, prefix, **kw))
    if backend == "gcs":
        endpoint = request.getfixturevalue("gcs_endpoint")
        return lambda name, **kw: GcsStore(name, gcs_config(endpoint, prefix, **kw))
    connection = request.getfixturevalue("azurite_connection")
    return lambda name, **kw: AzureBlobStore(name, azure_config(connection, prefix, **kw))


@pytest.fixture
def store(store_for: StoreFactory) -> ResultStore:
    return store_for("results")
