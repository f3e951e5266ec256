"""The ``.part`` file of an input result on its way to this agent (``agent.transfers``).

Bytes are appended and hashed as they arrive, from the relay or from a presigned URL; a part
an earlier try of the same fetch left is hashed again and resumed; the part becomes the
destination file only once its size and sha256 match the reference (fsynced, renamed,
directory fsynced), so no run of crashes, cuts and fallbacks ever leaves a torn or wrong file
under the destination's name.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from agent.results._errors import DigestMismatch
from meridian.core.resultref import ResultRef

READ_BYTES = 1024 * 1024


@dataclass
class Progress:
    """The bytes of ``part`` so far and their running sha256 (event loop or one thread at a
    time: the blocking methods run off the loop)."""

    part: Path
    received: int = 0
    digest: Any = field(default_factory=hashlib.sha256)
    # Holds bytes the relay did not check (a .part an earlier run left, or a presigned
    # download's): a digest mismatch then starts afresh instead of failing.
    unchecked: bool = False

    @classmethod
    def resume(cls, part: Path, size: int) -> Progress:
        """(blocking) Pick up ``part`` where an earlier run left it, or start afresh."""
        progress = cls(part)
        try:
            with open(part, "rb") as f:
                for block in iter(lambda: f.read(READ_BYTES), b""):
                    progress.digest.update(block)
                    progress.received += len(block)
        except FileNotFoundError:
            return progress
        if progress.received > size:  # not a prefix of this object: start again
            part.unlink()
            return cls(part)
        progress.unchecked = progress.received > 0
        return progress

    def restart(self) -> None:
        """(blocking) Throw the part away and start from nothing."""
        with contextlib.suppress(FileNotFoundError):
            self.part.unlink()
        self.received, self.digest, self.unchecked = 0, hashlib.sha256(), False

    def append(self, out: IO[bytes], data: bytes) -> None:
        """(blocking) Write ``data`` at the end of the part and hash it."""
        out.write(data)
        self.digest.update(data)
        self.received += len(data)

    def commit(self, ref: ResultRef, dest: Path) -> None:
        """(blocking) Check size and digest, make the file durable and rename it into place."""
        if self.received != ref.size or self.digest.hexdigest() != ref.sha256:
            raise DigestMismatch(
                f"the transferred file has {self.received} bytes with sha256 "
                f"{self.digest.hexdigest()}, not the reference's {ref.size} bytes with "
                f"sha256 {ref.sha256}"
            )
        if not self.part.exists():  # an empty object that no chunk wrote
            self.part.touch()
        with open(self.part, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(self.part, dest)
        fsync_dir(dest.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
