"""``[result_stores.NAME]`` tables: validation with clear errors, defaults, building stores."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from agent.results import (
    FilesystemStore,
    InvalidKey,
    ResultStoreConfigError,
    S3Config,
    attempt_key,
    build_store,
    check_key,
    key_segment,
    parse_result_stores,
)


def test_parse_a_toml_table(tmp_path: Path) -> None:
    text = f"""
    [result_stores.scratch]
    type = "filesystem"
    root = "{tmp_path}"
    retention_days = 14

    [result_stores.s3-main]
    type = "s3"
    bucket = "acme-results"
    prefix = "prod/"
    region = "eu-west-1"
    default = true
    """
    config = parse_result_stores(tomllib.loads(text)["result_stores"])
    assert config.default == "s3-main"
    assert config.stores["scratch"].retention_days == 14
    s3 = config.stores["s3-main"].backend
    assert isinstance(s3, S3Config) and (s3.bucket, s3.prefix) == ("acme-results", "prod/")
    store = build_store(config.stores["scratch"])
    assert isinstance(store, FilesystemStore) and store.name == "scratch"


def test_a_single_store_is_the_default_and_none_is_empty(tmp_path: Path) -> None:
    one = parse_result_stores({"only": {"type": "filesystem", "root": str(tmp_path)}})
    assert one.default == "only"
    assert parse_result_stores(None).default is None


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ({"s": {"type": "ftp"}}, "type must be one of azure_blob, filesystem, gcs, s3"),
        ({"s": {"type": "s3"}}, "\\[result_stores.s\\]: type 's3' needs 'bucket'"),
        ({"s": {"type": "s3", "bucket": "b", "bucket_name": "x"}}, "unknown keys bucket_name"),
        ({"s": {"type": "s3", "bucket": 3}}, "bucket must be a non-empty string"),
        ({"s": {"type": "s3", "bucket": "b", "part_size": "8MB"}}, "positive integer"),
        ({"s": {"type": "s3", "bucket": "b", "part_size": 1024}}, "part_size must be from"),
        ({"s": {"type": "s3", "bucket": "b", "prefix": "p"}}, "prefix must end with '/'"),
        ({"s": {"type": "s3", "bucket": "b", "prefix": "../x/"}}, "prefix:"),
        ({"s": {"type": "s3", "bucket": "b", "retention_days": 0}}, "retention_days"),
        ({"s": {"type": "s3", "bucket": "b", "default": "yes"}}, "default must be true"),
        ({"s": {"type": "gcs", "bucket": "b", "chunk_size": 1000}}, "multiple of 262144"),
        ({"s": {"type": "gcs", "bucket": "b", "anonymous": 1}}, "anonymous must be true"),
        ({"s": {"type": "azure_blob", "container": "c"}}, "exactly one of account_url"),
        ({"s": {"type": "filesystem", "root": "relative"}}, "absolute path"),
        ({"Bad": {"type": "filesystem", "root": "/x"}}, "store name"),
        ({"s": "not a table"}, "must be a table"),
        (
            {"a": {"type": "s3", "bucket": "b"}, "b": {"type": "s3", "bucket": "c"}},
            "none is the default",
        ),
        (
            {
                "a": {"type": "s3", "bucket": "b", "default": True},
                "b": {"type": "s3", "bucket": "c", "default": True},
            },
            "only one store can be the default",
        ),
    ],
)
def test_invalid_tables(table: dict[str, Any], problem: str) -> None:
    with pytest.raises(ResultStoreConfigError, match=problem):
        parse_result_stores(table)


def test_not_a_table() -> None:
    with pytest.raises(ResultStoreConfigError, match="table of stores"):
        parse_result_stores(["s3"])


@pytest.mark.parametrize(
    "key", ["", "../x", "a/../b", "a//b", ".hidden", "a/.incoming/x", "/abs", "a/", "a b", "é"]
)
def test_invalid_keys(key: str) -> None:
    with pytest.raises(InvalidKey):
        check_key(key)


def test_attempt_keys_encode_any_step_key() -> None:
    assert attempt_key("r-1", "extract#1", 2) == "runs/r-1/extract~231/2/result"
    assert key_segment("..") == "~2E."
    assert check_key(attempt_key("run", "a/b c", 1)) == "runs/run/a~2Fb~20c/1/result"


def test_filesystem_root_cannot_be_left_through_a_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    store = build_store(
        parse_result_stores({"fs": {"type": "filesystem", "root": str(root)}}).stores["fs"]
    )
    (root / "link").symlink_to(outside)
    with pytest.raises(InvalidKey, match="leaves the store's root"):
        store.put(
            "link/x", [b"1"], 1, "6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b"
        )
    assert list(outside.iterdir()) == []
