"""The producer side (agent.results.upload): the put, its reference, a re-put after a restart
(also of a sealed result: the same ciphertext again), and how each failure is classed."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from agent.results import (
    DigestMismatch,
    FilesystemConfig,
    FilesystemStore,
    ResultStore,
    ResultStoreError,
    ResultStoreUnavailable,
)
from agent.results.registry import NoResultStore, UnknownResultStore
from agent.results.upload import ResultTarget, UnsafeResultFile, store_failure, store_result
from agent.sealing import AttemptSeal
from meridian.core import sealedfile
from meridian.core.errors import SealError
from meridian.core.sealing import KeyRing
from providers.base import ResultFile

TARGET = ResultTarget("run-1", "extract#1", "att-1", "scratch")


@pytest.fixture
def stores(tmp_path: Path) -> dict[str, ResultStore]:
    return {"scratch": FilesystemStore("scratch", FilesystemConfig(tmp_path / "root"))}


def result_file(tmp_path: Path, data: bytes) -> tuple[Path, ResultFile]:
    path = tmp_path / "result.bin"
    path.write_bytes(data)
    return path, ResultFile("result.bin", len(data), hashlib.sha256(data).hexdigest(), "json")


def objects(root: Path) -> list[Path]:
    return sorted(p for p in (root / "runs").rglob("*") if p.is_file())


def test_the_result_is_put_once_and_referenced(
    tmp_path: Path, stores: dict[str, ResultStore]
) -> None:
    path, rf = result_file(tmp_path, b'{"rows": [1, 2, 3]}')
    args = (stores, TARGET, "onprem", path, rf)
    ref = store_result(*args, keys=KeyRing(), seal=None, sealed_path=tmp_path / "s")
    assert (ref.environment, ref.store, ref.size, ref.sha256) == (
        "onprem",
        "scratch",
        19,
        rf.sha256,
    )
    assert ref.uri == (tmp_path / "root" / "runs/run-1/extract~231/att-1/result").as_uri()
    # After a restart the same put again is a no-op with the same reference.
    assert store_result(*args, keys=KeyRing(), seal=None, sealed_path=tmp_path / "s") == ref
    assert len(objects(tmp_path / "root")) == 1


def test_a_sealed_result_is_stored_sealed_and_a_re_put_sends_the_same_ciphertext(
    tmp_path: Path, stores: dict[str, ResultStore]
) -> None:
    keys = KeyRing({"eu-sites": os.urandom(64)})
    seal = AttemptSeal("eu-sites", "run-1", "extract#1")
    path, rf = result_file(tmp_path, b'"a secret value"' * 100)
    sealed_path = tmp_path / "result.sealed"
    args = (stores, TARGET, "onprem", path, rf)
    ref = store_result(*args, keys=keys, seal=seal, sealed_path=sealed_path)
    (obj,) = objects(tmp_path / "root")
    assert ref.sealed and b"a secret value" not in obj.read_bytes()
    assert (ref.size, ref.sha256) == (
        obj.stat().st_size,
        hashlib.sha256(obj.read_bytes()).hexdigest(),
    )
    opened = sealedfile.open_file(keys, obj, tmp_path / "opened", "run-1", "extract#1")
    assert opened.plaintext_sha256 == rf.sha256
    # The agent died after the put: the kept sealed copy is put again, unchanged.
    assert store_result(*args, keys=keys, seal=seal, sealed_path=sealed_path) == ref
    with pytest.raises(SealError, match="no key for key group 'eu-sites'"):
        store_result(*args, keys=KeyRing(), seal=seal, sealed_path=tmp_path / "other")


def test_a_file_that_is_not_what_the_step_reported_is_not_stored(
    tmp_path: Path, stores: dict[str, ResultStore]
) -> None:
    path, rf = result_file(tmp_path, b"[1]")
    path.write_bytes(b"[2]")
    with pytest.raises(DigestMismatch, match="nothing was stored"):
        store_result(
            stores, TARGET, "onprem", path, rf, keys=KeyRing(), seal=None, sealed_path=path
        )
    assert not (tmp_path / "root" / "runs").exists()
    keys = KeyRing({"g": os.urandom(64)})
    with pytest.raises(DigestMismatch, match="the step reported"):
        store_result(
            stores,
            TARGET,
            "onprem",
            path,
            rf,
            keys=keys,
            seal=AttemptSeal("g", "run-1", "extract#1"),
            sealed_path=tmp_path / "result.sealed",
        )
    assert not (tmp_path / "result.sealed").exists()


def test_a_missing_store_is_named(tmp_path: Path, stores: dict[str, ResultStore]) -> None:
    path, rf = result_file(tmp_path, b"[1]")
    for target, error in [
        (ResultTarget("r", "s", "a", "archive"), UnknownResultStore),
        (ResultTarget("r", "s", "a", ""), NoResultStore),
    ]:
        with pytest.raises(error):
            store_result(stores, target, "e", path, rf, keys=KeyRing(), seal=None, sealed_path=path)


@pytest.mark.parametrize(
    ("exc", "error_class", "type_name"),
    [
        (UnknownResultStore("x"), "permanent", "meridian.UnknownResultStore"),
        (NoResultStore("x"), "permanent", "meridian.NoResultStore"),
        (ResultStoreUnavailable("x"), "infrastructure", "meridian.ResultStoreUnavailable"),
        (DigestMismatch("x"), "infrastructure", "meridian.ResultDigestMismatch"),
        (ResultStoreError("x"), "infrastructure", "meridian.ResultStoreError"),
        (SealError("x"), "permanent", "meridian.core.errors.SealError"),
        (OSError(28, "No space left on device"), "infrastructure", "meridian.ResultStoreError"),
    ],
)
def test_failures_are_classed(exc: Exception, error_class: str, type_name: str) -> None:
    finished = store_failure(exc, "scratch")
    assert finished.outcome == "failed" and finished.error is not None
    assert (finished.error.error_class, finished.error.type) == (error_class, type_name)


def test_the_target_survives_in_the_work_dir(tmp_path: Path) -> None:
    assert ResultTarget.load(tmp_path) is None
    TARGET.save(tmp_path)
    assert ResultTarget.load(tmp_path) == TARGET
    (tmp_path / "result-target.json").write_text('{"run_id": 3}')
    with pytest.raises(ResultStoreError, match="malformed"):
        ResultTarget.load(tmp_path)


def test_a_result_file_that_is_a_symlink_is_refused_and_nothing_is_stored(
    tmp_path: Path, stores: dict[str, ResultStore]
) -> None:
    # A step on a host sharing the work dir points result.bin at a file of the agent's host.
    secret = tmp_path / "agent.key"
    secret.write_bytes(b"the agent's private key")
    link = tmp_path / "result.bin"
    link.symlink_to(secret)
    rf = ResultFile("result.bin", 23, hashlib.sha256(secret.read_bytes()).hexdigest(), "bytes")
    with pytest.raises(UnsafeResultFile, match="not a regular file") as refused:
        store_result(stores, TARGET, "onprem", link, rf, keys=KeyRing(), seal=None,
                     sealed_path=tmp_path / "s")  # fmt: skip
    assert not (tmp_path / "root" / "runs").exists() or objects(tmp_path / "root") == []
    failed = store_failure(refused.value, "scratch")
    assert failed.error is not None and failed.error.error_class == "permanent"
