"""The presigned-URL options of the agent config: ``presign_transfers``/``presign_ttl_s`` per
store (the producing site opts in) and the ``[transfers]`` table (the consumer's side)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.results import ResultStoreConfigError, parse_result_stores
from agent.results.config import (
    DEFAULT_PRESIGNED_URL_HOSTS,
    TransferSettings,
    parse_transfer_settings,
)
from meridian.cli.agent_config import load_agent_config_file
from meridian.core.errors import ValidationError

S3 = {"type": "s3", "bucket": "b"}


def test_presigning_is_off_by_default_and_opted_into_per_store() -> None:
    config = parse_result_stores(
        {
            "plain": S3,
            "direct": {**S3, "presign_transfers": True, "presign_ttl_s": 60, "default": True},
            "short": {**S3, "presign_transfers": True},
        }
    )
    assert config.presigning() == {"direct": 60, "short": 300}
    assert config.transfers == TransferSettings(True, False)


@pytest.mark.parametrize(
    ("table", "why"),
    [
        ({"type": "filesystem", "root": "/r", "presign_transfers": True}, "needs an object store"),
        ({**S3, "presign_transfers": "yes"}, "presign_transfers must be true or false"),
        ({**S3, "presign_ttl_s": 29}, "presign_ttl_s must be an integer from 30 to 3600"),
        ({**S3, "presign_ttl_s": 3601}, "from 30 to 3600"),
        ({**S3, "presign_ttl_s": True}, "from 30 to 3600"),
    ],
)
def test_bad_presign_options_name_the_table(table: dict[str, Any], why: str) -> None:
    with pytest.raises(ResultStoreConfigError, match=rf"\[result_stores\.main\]: .*{why}"):
        parse_result_stores({"main": table})


def test_the_transfers_table_is_checked() -> None:
    assert parse_transfer_settings({"allow_http_presigned_urls": True}) == TransferSettings(
        accept_presigned_urls=True, allow_http_presigned_urls=True
    )
    with pytest.raises(ResultStoreConfigError, match="unknown keys follow_redirects"):
        parse_transfer_settings({"follow_redirects": True})
    with pytest.raises(ResultStoreConfigError, match="accept_presigned_urls must be true"):
        parse_transfer_settings({"accept_presigned_urls": 1})


def test_the_agent_config_file_carries_transfers_even_without_stores(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text("[transfers]\naccept_presigned_urls = false\n")
    loaded = load_agent_config_file(path).result_stores
    assert loaded is not None and dict(loaded.stores) == {}
    assert loaded.transfers == TransferSettings(accept_presigned_urls=False)
    path.write_text("[transfers]\nallow_http_presigned_urls = 'yes'\n")
    with pytest.raises(ValidationError, match=r"agent.toml: \[transfers\]: allow_http"):
        load_agent_config_file(path)


def test_presigned_url_hosts_default_to_the_clouds_storage_endpoints_and_are_replaced() -> None:
    assert TransferSettings().presigned_url_hosts == DEFAULT_PRESIGNED_URL_HOSTS
    assert {"@s3", "storage.googleapis.com", ".blob.core.windows.net"} <= set(
        DEFAULT_PRESIGNED_URL_HOSTS
    )
    settings = parse_transfer_settings(
        {"presigned_url_hosts": ["MinIO.example.com", ".Storage.Example", "127.0.0.1", "::1"]}
    )
    assert settings.presigned_url_hosts == (
        "minio.example.com",
        ".storage.example",
        "127.0.0.1",
        "::1",
    )


@pytest.mark.parametrize(
    ("hosts", "why"),
    [
        ([], "is empty: to never download .* accept_presigned_urls = false"),
        ("s3.amazonaws.com", "must be a list of hosts"),
        ([1], "must be a list of hosts"),
        (["https://minio.example.com"], "is not a host name, an IP address, a '.suffix'"),
        (["minio.example.com:9000"], "no scheme, port"),
        (["*.example.com"], "wildcard"),
        (["[::1]"], "not a host name"),
        (["300.1.2.3"], "not a valid IP address"),
        (["a" * 300], "longer than 253"),
        (["h.example.com"] * 65, "more than 64 entries"),
    ],
)
def test_bad_presigned_url_hosts_are_refused(hosts: Any, why: str) -> None:
    with pytest.raises(ResultStoreConfigError, match=rf"\[transfers\]: presigned_url_hosts.*{why}"):
        parse_transfer_settings({"presigned_url_hosts": hosts})


def test_the_agent_config_file_carries_presigned_url_hosts(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[transfers]\npresigned_url_hosts = ["127.0.0.1", ".minio.internal"]\n')
    loaded = load_agent_config_file(path).result_stores
    assert loaded is not None
    assert loaded.transfers.presigned_url_hosts == ("127.0.0.1", ".minio.internal")
