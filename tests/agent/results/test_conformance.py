"""The result-store contract, run against every backend (filesystem, S3, GCS, Azure Blob).

S3 runs against moto in server mode, GCS against gcp-storage-emulator, Azure Blob against
Azurite, the filesystem store on a temporary directory: all real servers in other processes,
driven by the official SDKs over HTTP.
"""

from __future__ import annotations

import hashlib
import os
import tracemalloc
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.results import (
    DigestMismatch,
    PresignUnsupported,
    ResultConflict,
    ResultLocation,
    ResultNotFound,
    ResultStore,
    ResultStoreError,
)
from tests.agent.results.conftest import StoreFactory
from tests.agent.results.patterns import MiB, digest, pattern

pytestmark = [pytest.mark.emulator, pytest.mark.timeout(300)]


def _read(store: ResultStore, location: ResultLocation, chunk_size: int = MiB) -> bytes:
    with store.open(location, chunk_size) as reader:
        return b"".join(reader)


def test_put_from_chunks_and_from_a_file(store: ResultStore, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    sha = hashlib.sha256(data).hexdigest()
    location = store.put("a/from-chunks", [data[:1000], data[1000:]], len(data), sha)
    assert (location.store, location.key, location.size, location.sha256) == (
        "results",
        "a/from-chunks",
        len(data),
        sha,
    )
    assert _read(store, location) == data
    path = tmp_path / "src"
    path.write_bytes(data)
    from_file = store.put("a/from-file", path, len(data), sha)
    assert _read(store, from_file, 4096) == data
    info = store.stat("a/from-file")
    assert info.size == len(data)
    assert info.sha256 in (sha, None)  # the filesystem store keeps no digest of its own


def test_empty_object(store: ResultStore) -> None:
    sha = hashlib.sha256(b"").hexdigest()
    location = store.put("empty", [], 0, sha)
    assert _read(store, location) == b""
    assert store.stat("empty").size == 0


def test_re_put_of_the_same_bytes_is_a_no_op(store: ResultStore) -> None:
    data = b"x" * 70_000
    sha = hashlib.sha256(data).hexdigest()
    first = store.put("same", [data], len(data), sha)
    before = store.stat("same")

    def must_not_be_read() -> Iterator[bytes]:
        raise AssertionError("a re-put of a complete object must not read its source")
        yield b""

    assert store.put("same", must_not_be_read(), len(data), sha) == first
    assert store.stat("same").modified == before.modified
    assert [i.key for i in store.list("")] == ["same"]


def test_other_bytes_under_an_existing_key_conflict(store: ResultStore) -> None:
    data = b"original"
    location = store.put("k", [data], len(data), hashlib.sha256(data).hexdigest())
    other = b"replaced"
    with pytest.raises(ResultConflict, match="different object"):
        store.put("k", [other], len(other), hashlib.sha256(other).hexdigest())
    assert _read(store, location) == data


@pytest.mark.parametrize("size", [100_000, 12 * MiB], ids=["single", "multipart"])
def test_digest_or_size_mismatch_keeps_nothing(store: ResultStore, size: int) -> None:
    sha = digest(size)
    with pytest.raises(DigestMismatch, match="sha256 is"):
        store.put("bad", pattern(size, seed=1), size, sha)
    with pytest.raises(DigestMismatch, match="ended after"):
        store.put("bad", pattern(size - 1), size, sha)
    with pytest.raises(DigestMismatch, match="more than the announced"):
        store.put("bad", pattern(size + 1), size, sha)
    with pytest.raises(ResultNotFound):
        store.stat("bad")
    assert list(store.list("")) == []
    # The key is still free: the right bytes go in.
    location = store.put("bad", pattern(size), size, sha)
    assert store.stat("bad").size == size
    with store.open(location) as reader:
        assert sum(len(c) for c in reader) == size


def test_reader_checks_the_digest_before_the_last_chunk(store: ResultStore) -> None:
    data = os.urandom(3 * MiB)
    good = store.put("d", [data], len(data), hashlib.sha256(data).hexdigest())
    lying = ResultLocation(good.store, good.uri, good.key, good.size, "0" * 64)
    seen = 0
    with pytest.raises(DigestMismatch, match="expected 0000"), store.open(lying, MiB) as reader:
        for chunk in reader:
            seen += len(chunk)
    assert seen < len(data)  # the last chunk was withheld
    short = ResultLocation(good.store, good.uri, good.key, good.size - 1, good.sha256)
    with pytest.raises(DigestMismatch, match="more than"), store.open(short) as reader:
        b"".join(reader)


def test_large_object_streams_in_bounded_memory(store: ResultStore) -> None:
    size = 64 * MiB
    sha = digest(size)
    location = store.put("big", pattern(size), size, sha)
    tracemalloc.start()
    try:
        chunks = 0
        seen = hashlib.sha256()
        with store.open(location, MiB) as reader:
            for chunk in reader:
                assert len(chunk) <= MiB
                seen.update(chunk)
                chunks += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen.hexdigest() == sha
    assert chunks >= 64
    # Each backend holds a few copies of one request (<= 4 MiB here) at most; a reader that
    # buffered the object would show 64 MiB.
    assert peak < 24 * MiB, f"peak {peak / MiB:.1f} MiB while streaming 64 MiB"


def test_delete(store: ResultStore) -> None:
    location = store.put("gone", [b"abc"], 3, hashlib.sha256(b"abc").hexdigest())
    assert store.delete("gone") is True
    assert store.delete("gone") is False
    with pytest.raises(ResultNotFound):
        store.stat("gone")
    with pytest.raises(ResultNotFound):
        _read(store, location)


def test_list_by_prefix_and_age(store: ResultStore) -> None:
    for key in ("runs/r1/a/1/result", "runs/r1/b/1/result", "runs/r2/a/1/result"):
        store.put(key, [key.encode()], len(key), hashlib.sha256(key.encode()).hexdigest())
    keys = sorted(i.key for i in store.list("runs/"))
    assert keys == ["runs/r1/a/1/result", "runs/r1/b/1/result", "runs/r2/a/1/result"]
    assert sorted(i.key for i in store.list("runs/r1/")) == keys[:2]
    assert [i.key for i in store.list("runs/r2")] == keys[2:]
    now = datetime.now(UTC)
    assert list(store.list("", older_than=now - timedelta(hours=1))) == []
    old = list(store.list("", older_than=now + timedelta(hours=1)))
    assert sorted(i.key for i in old) == keys
    assert all(i.size == len(i.key) for i in old)


def test_open_refuses_another_stores_location(store_for: StoreFactory) -> None:
    ours = store_for("results")
    theirs = store_for("other")
    location = theirs.put("x", [b"1"], 1, hashlib.sha256(b"1").hexdigest())
    with pytest.raises(ResultStoreError, match="not an object of store 'results'"):
        ours.open(location)


def test_presign_then_plain_http(store_for: StoreFactory, backend: str, tmp_path: Path) -> None:
    extra = {}
    if backend == "gcs":
        extra["signing_credentials_file"] = str(_service_account_file(tmp_path))
    store = store_for("results", **extra)
    data = os.urandom(50_000)
    location = store.put("shared/result", [data], len(data), hashlib.sha256(data).hexdigest())
    if backend == "filesystem":
        with pytest.raises(PresignUnsupported, match="cannot hand out URLs"):
            store.presign(location, timedelta(minutes=5))
        return
    url = store.presign(location, timedelta(minutes=5))
    assert url.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.read() == data
    with pytest.raises(ValueError, match="ttl"):
        store.presign(location, timedelta(days=8))


def _service_account_file(tmp_path: Path) -> Path:
    """A throwaway service-account key: V4 signing is local, so no Google endpoint is called."""
    import json

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    path = tmp_path / "sa.json"
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "meridian-emulator",
                "private_key_id": "1",
                "private_key": pem,
                "client_email": "signer@meridian-emulator.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": "https://oauth2.googleapis.com/token",
            }
        )
    )
    return path


def test_a_racing_writer_never_replaces_a_committed_object(
    store: ResultStore, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two writers both saw "no object" and upload; the service's create-only commit decides."""
    if backend == "gcs":
        pytest.skip("gcp-storage-emulator ignores ifGenerationMatch: see test_gcs_contract.py")
    first = b"first writer"
    location = store.put("race", [first], len(first), hashlib.sha256(first).hexdigest())
    checks: list[bool] = []
    real = getattr(store, "_exists_same", None)

    def stale_check(loc: ResultLocation) -> bool:
        # The second writer's pre-check ran before the first commit; later checks are real.
        checks.append(True)
        return False if len(checks) == 1 else bool(real and real(loc))

    if backend != "filesystem":
        monkeypatch.setattr(store, "_exists_same", stale_check)
        same = store.put("race", [first], len(first), location.sha256)
        assert same == location and len(checks) == 2
        checks.clear()
    second = b"other bytes!"
    with pytest.raises(ResultConflict):
        if backend == "filesystem":
            monkeypatch.setattr(Path, "exists", lambda self: False)  # the stale pre-check
        store.put("race", [second], len(second), hashlib.sha256(second).hexdigest())
    monkeypatch.undo()
    assert _read(store, location) == first
