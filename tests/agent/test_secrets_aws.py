"""The aws-sm resolver against moto in server mode (a third-party emulator, real boto3 over HTTP).

moto checks neither IAM permissions nor signatures, so ``secretsmanager:GetSecretValue``
authorization is documented (docs/secrets.md) rather than tested here.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from agent.secrets import (
    AwsSecretsManagerResolver,
    AwsSmConfig,
    SecretNotFound,
    SecretStore,
    SecretUnavailable,
)

boto3 = pytest.importorskip("boto3", reason="install meridian-orchestrator[aws]")
moto_server = pytest.importorskip("moto.server", reason="install moto[server]")

pytestmark = [pytest.mark.emulator, pytest.mark.timeout(60)]

REGION = "us-east-1"
CREDS = {"access_key_id": "testing", "secret_access_key": "testing"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def sm(endpoint: str) -> Any:
    return boto3.client(
        "secretsmanager",
        region_name=REGION,
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
def resolver(endpoint: str) -> AwsSecretsManagerResolver:
    config = AwsSmConfig(
        region=REGION, endpoint_url=endpoint, access_key_id="testing", secret_access_key="testing"
    )
    return AwsSecretsManagerResolver(config)


def test_string_secret_and_rotation(sm: Any, resolver: AwsSecretsManagerResolver) -> None:
    sm.create_secret(Name="prod/db-password", SecretString="s3cr3t-v1")
    assert resolver.resolve("prod/db-password") == "s3cr3t-v1"
    sm.put_secret_value(SecretId="prod/db-password", SecretString="s3cr3t-v2")
    assert resolver.resolve("prod/db-password") == "s3cr3t-v2"  # nothing is cached


def test_json_key_and_arn(sm: Any, resolver: AwsSecretsManagerResolver) -> None:
    arn = sm.create_secret(
        Name="prod/db", SecretString=json.dumps({"user": "app", "password": "pw-123", "port": 5432})
    )["ARN"]
    assert resolver.resolve("prod/db#password") == "pw-123"
    assert resolver.resolve("prod/db#port") == "5432"
    assert resolver.resolve(f"{arn}#user") == "app"
    with pytest.raises(SecretNotFound, match="no key 'nope'"):
        resolver.resolve("prod/db#nope")


def test_binary_secret(sm: Any, resolver: AwsSecretsManagerResolver) -> None:
    sm.create_secret(Name="bin/ok", SecretBinary=b"binary-text")
    sm.create_secret(Name="bin/bad", SecretBinary=b"\xff\x00\xfe")
    assert resolver.resolve("bin/ok") == "binary-text"
    with pytest.raises(SecretNotFound, match="not UTF-8"):
        resolver.resolve("bin/bad")


def test_missing_and_json_errors_are_permanent(
    sm: Any, resolver: AwsSecretsManagerResolver
) -> None:
    sm.create_secret(Name="plain/text", SecretString="not json at all")
    with pytest.raises(SecretNotFound, match="ResourceNotFoundException"):
        resolver.resolve("does/not/exist")
    with pytest.raises(SecretNotFound, match="not JSON") as info:
        resolver.resolve("plain/text#k")
    assert "not json at all" not in str(info.value)
    sm.create_secret(Name="to/delete", SecretString="gone-soon")
    sm.delete_secret(SecretId="to/delete")  # scheduled for deletion: InvalidRequestException
    with pytest.raises(SecretNotFound):
        resolver.resolve("to/delete")


def test_unreachable_endpoint_is_infrastructure() -> None:
    config = AwsSmConfig(
        region=REGION,
        endpoint_url=f"http://127.0.0.1:{_free_port()}",
        timeout_s=1.0,
        max_attempts=1,
        access_key_id="testing",
        secret_access_key="testing",
    )
    with pytest.raises(SecretUnavailable, match="Secrets Manager"):
        AwsSecretsManagerResolver(config).resolve("prod/anything")


def test_through_the_store_with_agent_config(sm: Any, endpoint: str) -> None:
    sm.create_secret(Name="store/api", SecretString=json.dumps({"token": "tok-abcdef"}))
    store = SecretStore.from_config(
        {"aws-sm": {"region": REGION, "endpoint_url": endpoint, **CREDS}}
    )
    resolved = asyncio.run(store.resolve({"API_TOKEN": "aws-sm:store/api#token"}))
    assert dict(resolved.env) == {"API_TOKEN": "tok-abcdef"}
    with pytest.raises(SecretNotFound, match=r"^secret DB \(aws-sm:store/missing\): "):
        asyncio.run(store.resolve({"DB": "aws-sm:store/missing"}))
