"""The public surface of agent.results, pinned."""

from __future__ import annotations

import agent.results


def test_all_is_pinned() -> None:
    assert sorted(agent.results.__all__) == [
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
    for name in agent.results.__all__:
        assert getattr(agent.results, name) is not None


def test_stores_satisfy_the_protocol(tmp_path) -> None:
    store = agent.results.FilesystemStore("fs", agent.results.FilesystemConfig(tmp_path))
    assert isinstance(store, agent.results.ResultStore)
