"""The bundle cache: bounded, hash-checked, unpacked atomically, fetched once per hash."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.bundles import BundleCache, BundlePiece
from meridian.core.bundle import pack_directory
from meridian.core.errors import BundleError, ValidationError


class FakeSource:
    """Serves bundle bytes in small chunks and counts fetches."""

    def __init__(self, blobs: dict[str, bytes], claimed_size: int | None = None) -> None:
        self.blobs = blobs
        self.claimed_size = claimed_size
        self.calls: list[str] = []

    async def __call__(self, sha256: str) -> AsyncIterator[BundlePiece]:
        self.calls.append(sha256)
        data = self.blobs[sha256]
        size = self.claimed_size if self.claimed_size is not None else len(data)
        await asyncio.sleep(0.01)  # let concurrent callers pile up
        yield sha256, size, data[:7]
        for i in range(7, len(data), 7):
            yield "", 0, data[i : i + 7]


def _bundle(tmp_path: Path) -> tuple[str, bytes]:
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "__init__.py").write_text("VALUE = 1\n")
    bundle = pack_directory(src, max_size=1024 * 1024)
    return bundle.sha256, bundle.data


def test_fetches_once_and_unpacks(tmp_path: Path) -> None:
    sha, data = _bundle(tmp_path)
    source = FakeSource({sha: data})
    cache = BundleCache(tmp_path / "bundles", source, max_size=1024 * 1024)

    async def scenario() -> list[Path]:
        return list(await asyncio.gather(*(cache.get(sha) for _ in range(3))))

    paths = asyncio.run(scenario())
    assert paths == [tmp_path / "bundles" / sha] * 3
    assert (paths[0] / "pkg" / "__init__.py").read_text() == "VALUE = 1\n"
    assert source.calls == [sha]
    assert asyncio.run(cache.get(sha)) == paths[0] and source.calls == [sha]  # cached
    assert sorted(p.name for p in (tmp_path / "bundles").iterdir()) == [sha]  # no temp dirs


def test_hash_mismatch_is_refused_and_nothing_cached(tmp_path: Path) -> None:
    _, data = _bundle(tmp_path)
    wrong = hashlib.sha256(b"something else").hexdigest()
    cache = BundleCache(tmp_path / "bundles", FakeSource({wrong: data}), max_size=1024 * 1024)
    with pytest.raises(BundleError, match="corrupt"):
        asyncio.run(cache.get(wrong))
    assert not (tmp_path / "bundles" / wrong).exists()


def test_oversized_bundles_are_refused(tmp_path: Path) -> None:
    sha, data = _bundle(tmp_path)
    claims_huge = BundleCache(tmp_path / "b1", FakeSource({sha: data}, 10**9), max_size=1024)
    with pytest.raises(BundleError, match="over the limit"):
        asyncio.run(claims_huge.get(sha))
    lies_small = BundleCache(tmp_path / "b2", FakeSource({sha: data}, 1), max_size=20)
    with pytest.raises(BundleError, match="over the limit"):
        asyncio.run(lies_small.get(sha))


def test_hash_must_be_a_hex_digest(tmp_path: Path) -> None:
    cache = BundleCache(tmp_path / "bundles", FakeSource({}), max_size=1024)
    with pytest.raises(ValidationError):
        asyncio.run(cache.get("../../etc"))
