"""The put-side and read-side digest checks every backend relies on, tested directly."""

from __future__ import annotations

import hashlib
import os
from datetime import datetime
from pathlib import Path

import pytest

from agent.results import DigestMismatch, FilesystemConfig, FilesystemStore, ResultLocation
from agent.results._base import SourceStream, VerifiedChunks
from meridian.core.errors import ValidationError


def test_source_withholds_the_last_bytes_when_the_digest_is_wrong() -> None:
    data = os.urandom(10_000)
    stream = SourceStream([data], len(data), "0" * 64, "put x")
    assert stream.read(4096) == data[:4096]
    assert stream.tell() == 4096
    with pytest.raises(DigestMismatch, match=r"put x: sha256 is .* nothing was stored"):
        stream.read(100_000)


def test_source_slices_one_huge_chunk_and_accepts_memoryviews(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)
    sha = hashlib.sha256(data).hexdigest()
    stream = SourceStream([memoryview(data)], len(data), sha, "put x")
    parts = []
    while part := stream.read(65536):
        parts.append(part)
    assert b"".join(parts) == data
    path = tmp_path / "f"
    path.write_bytes(data)
    with SourceStream(path, len(data), sha, "put f") as from_file:
        assert from_file.read() == data


def test_source_refuses_non_bytes() -> None:
    with pytest.raises(TypeError, match="yields bytes, not str"):
        SourceStream(["text"], 4, "0" * 64, "put x").read(4)


def test_reader_rechunks_and_refuses_short_objects() -> None:
    data = b"abcdefghij"
    location = ResultLocation("s", "file:///x", "x", 10, hashlib.sha256(data).hexdigest())
    assert list(VerifiedChunks(iter([data]), location, 3)) == [b"abc", b"def", b"ghi", b"j"]
    short = ResultLocation("s", "file:///x", "x", 11, location.sha256)
    with pytest.raises(DigestMismatch, match="10 bytes, expected 11"):
        list(VerifiedChunks(iter([data]), short, 4))
    with pytest.raises(ValueError, match="chunk_size"):
        VerifiedChunks(iter([data]), location, 0)


def test_put_and_list_arguments_are_validated(tmp_path: Path) -> None:
    store = FilesystemStore("fs", FilesystemConfig(tmp_path))
    with pytest.raises(ValidationError, match="sha256 must be"):
        store.put("k", [b""], 0, "ABC")
    with pytest.raises(ValidationError, match="size"):
        store.put("k", [b""], -1, "0" * 64)
    with pytest.raises(ValidationError, match="timezone-aware"):
        list(store.list("", older_than=datetime(2026, 1, 1)))
    with pytest.raises(ValidationError, match="timezone-aware"):
        store.abort_incomplete(datetime(2026, 1, 1))
