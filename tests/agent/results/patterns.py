"""Deterministic test objects produced chunk by chunk, so no test holds a whole large object."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

MiB = 1024 * 1024


def pattern(size: int, seed: int = 0, chunk: int = MiB) -> Iterator[bytes]:
    """``size`` bytes whose every ``chunk`` differs, generated lazily."""
    for index, start in enumerate(range(0, size, chunk)):
        block = hashlib.sha256(f"{seed}:{index}".encode()).digest()
        n = min(chunk, size - start)
        yield (block * (n // 32 + 1))[:n]


def digest(size: int, seed: int = 0) -> str:
    sha = hashlib.sha256()
    for part in pattern(size, seed):
        sha.update(part)
    return sha.hexdigest()
