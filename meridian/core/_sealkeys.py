"""Sealing key material: key files, key expansion and fingerprints (see ``meridian.core.sealing``).

A key file holds the base64 (or hex) encoding of 32 or 64 random bytes and must be readable by
its owner only; ``generate_key_file`` writes one that is. Error messages name the key group and
the file, never anything read from it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import re
import secrets
import stat
from pathlib import Path

from meridian.core.errors import SealError

KEY_BYTES = 64  # AES-256-SIV: two 256-bit AES keys
ACCEPTED_KEY_BYTES = (32, 64)
MAX_KEY_FILE_BYTES = 4096


def expand_key(key: bytes, group: str = "") -> bytes:
    """A 64-byte AES-SIV key from 32 (expanded with HKDF-SHA256) or 64 random bytes."""
    if len(key) == KEY_BYTES:
        return bytes(key)
    if len(key) != 32:
        where = f"key group {group!r}: " if group else ""
        raise SealError(f"{where}a key must be 32 or 64 bytes, got {len(key)}")
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=b"meridian-seal-v1")
    return hkdf.derive(key)


def fingerprint(key: bytes) -> str:
    """``ab12-cd34-ef56-7890``: HMAC of a fixed label, reveals nothing about the key."""
    digest = hmac.new(key, b"meridian-seal-fingerprint-v1", hashlib.sha256).hexdigest()[:16]
    return "-".join(digest[i : i + 4] for i in range(0, 16, 4))


def read_key_file(path: Path, group: str = "") -> bytes:
    """The key in ``path`` (base64 or hex of 32 or 64 bytes), refusing a file others can read.

    ``group`` only names the key group in error messages.
    """
    where = f"key group {group!r}: key file {path}" if group else f"key file {path}"
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise SealError(f"{where}: cannot read it: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SealError(f"{where} is not a regular file")
        if info.st_mode & 0o077:
            raise SealError(
                f"{where} is accessible by group or others "
                f"(mode {stat.S_IMODE(info.st_mode):04o}); run `chmod 600 {path}`"
            )
        data = os.read(fd, MAX_KEY_FILE_BYTES + 1)
    finally:
        os.close(fd)
    key = _decode_key(data)
    if key is None:
        raise SealError(
            f"{where} must hold the base64 or hex encoding of "
            "32 or 64 random bytes (create one with `meridian seal-key new PATH`)"
        )
    return expand_key(key, group)


def _decode_key(data: bytes) -> bytes | None:
    if len(data) > MAX_KEY_FILE_BYTES:
        return None
    text = data.strip()
    candidates: list[bytes] = []
    if re.fullmatch(rb"[0-9a-fA-F]+", text):
        candidates.append(binascii.unhexlify(text) if len(text) % 2 == 0 else b"")
    with contextlib.suppress(binascii.Error, ValueError):
        candidates.append(base64.b64decode(text, validate=True))
    return next((key for key in candidates if len(key) in ACCEPTED_KEY_BYTES), None)


def generate_key_file(path: Path) -> str:
    """Write a new random key to ``path`` (mode 0600, never overwriting); returns its
    fingerprint."""
    key = secrets.token_bytes(KEY_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise SealError(f"{path} already exists; a key file is never overwritten") from None
    except OSError as exc:
        raise SealError(f"cannot create key file {path}: {exc.strerror or exc}") from None
    try:
        os.fchmod(fd, 0o600)  # whatever the umask allowed
        os.write(fd, base64.b64encode(key) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    return fingerprint(key)
