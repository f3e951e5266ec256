"""Sealed files: a step result of any size, sealed with a key group, streamed in segments.

The results of sealed steps that stay at their site (docs/results.md) are stored sealed, so a
result store, a transfer between sites and the control plane see ciphertext only. Sealed
*values* (``meridian.core.sealing``) are small and deterministic (AES-SIV over the whole
value); a file can be gigabytes, so it is sealed as a stream of segments with AES-256-GCM
(the STREAM construction): each segment authenticates on its own, memory stays at two
segments whatever the size, and truncation, reordering, duplication or alteration of any
segment makes opening fail.

Layout::

    header   MAGIC "MRDNSF" | version (1) | segment size (u32) | salt (32) | nonce prefix (8)
             | key group (u8 length + UTF-8) | key fingerprint (u8 length + ASCII)
             | run id (u16 length + UTF-8) | step key (u16 length + UTF-8)
    segments AES-256-GCM(ciphertext + 16-byte tag) of up to ``segment size`` plaintext bytes;
             every segment but the last holds exactly ``segment size`` bytes

The file key is derived from the key group's key with HKDF-SHA256 (``KeyRing.derive_key``,
salt = the header's random salt), so no two files share a key. Segment ``i`` uses the nonce
``prefix || i`` (u32) and the associated data ``header || i (u64) || final flag (1 byte)``: a
segment moved to another index, a non-final segment presented as the last (a truncated file),
or a header changed to name another run, step or key group all fail authentication. The
header's run id and step key say which step sealed the file; ``open_file`` checks them when
the caller knows what to expect.

Output files are written atomically: to ``DST.part``, fsynced, renamed. An opened file that
fails half-way leaves no plaintext behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from meridian.core.durable import fsync_dir
from meridian.core.errors import SealError
from meridian.core.sealing import KeyRing, check_key_group

MAGIC = b"MRDNSF"
VERSION = 1
SEGMENT_BYTES = 1024 * 1024
TAG_BYTES = 16
SALT_BYTES = 32
NONCE_PREFIX_BYTES = 8
MAX_SEGMENTS = 2**32  # the nonce counter is a u32: 4 PiB at 1 MiB per segment
MAX_NAME_BYTES = 4096  # run ids and step keys are far shorter; bounds the header
KDF_INFO = b"meridian-sealed-file-v1"
_FIXED = struct.Struct(">6sBI")  # magic, version, segment size
_MIN_SEGMENT, _MAX_SEGMENT = 4096, 64 * 1024 * 1024

StrPath = str | os.PathLike[str]


class _Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class SealedFileInfo:
    """What sealing or opening one file saw: whose it is and both sides' sizes and digests."""

    key_group: str
    run_id: str
    step_key: str
    plaintext_size: int
    plaintext_sha256: str
    sealed_size: int
    sealed_sha256: str


@dataclass(frozen=True)
class _Header:
    segment_bytes: int
    salt: bytes
    nonce_prefix: bytes
    key_group: str
    fingerprint: str
    run_id: str
    step_key: str
    raw: bytes  # the exact bytes, authenticated with every segment

    @classmethod
    def new(cls, keys: KeyRing, group: str, run_id: str, step_key: str) -> _Header:
        fields = (
            _FIXED.pack(MAGIC, VERSION, SEGMENT_BYTES),
            salt := secrets.token_bytes(SALT_BYTES),
            prefix := secrets.token_bytes(NONCE_PREFIX_BYTES),
            _short(group.encode()),
            _short((fingerprint := keys.fingerprint(group)).encode()),
            _long(run_id.encode(), "run id"),
            _long(step_key.encode(), "step key"),
        )
        raw = b"".join(fields)
        return cls(SEGMENT_BYTES, salt, prefix, group, fingerprint, run_id, step_key, raw)

    @classmethod
    def read(cls, f: _Readable, where: str) -> _Header:
        reader = _HeaderReader(f, where)
        magic, version, segment_bytes = _FIXED.unpack(reader.take(_FIXED.size, "its header"))
        if magic != MAGIC:
            raise SealError(f"{where} is not a sealed Meridian file")
        if version != VERSION:
            raise SealError(
                f"{where} is sealed with format version {version}; this Meridian reads version "
                f"{VERSION} (upgrade Meridian where the file is opened)"
            )
        if not _MIN_SEGMENT <= segment_bytes <= _MAX_SEGMENT:
            raise SealError(f"{where}: segment size {segment_bytes} is out of range")
        salt = reader.take(SALT_BYTES, "its salt")
        prefix = reader.take(NONCE_PREFIX_BYTES, "its nonce")
        group = reader.text(1, "key group")
        check_key_group(group, where)
        fingerprint = reader.text(1, "key fingerprint")
        run_id = reader.text(2, "run id")
        step_key = reader.text(2, "step key")
        return cls(segment_bytes, salt, prefix, group, fingerprint, run_id, step_key, reader.raw)

    def cipher(self, keys: KeyRing) -> Any:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        return AESGCM(keys.derive_key(self.key_group, KDF_INFO, self.salt))

    def nonce(self, index: int) -> bytes:
        return self.nonce_prefix + struct.pack(">I", index)

    def associated_data(self, index: int, final: bool) -> bytes:
        return self.raw + struct.pack(">QB", index, 1 if final else 0)


class _HeaderReader:
    def __init__(self, f: _Readable, where: str) -> None:
        self._f = f
        self._where = where
        self._parts: list[bytes] = []

    @property
    def raw(self) -> bytes:
        return b"".join(self._parts)

    def take(self, n: int, what: str) -> bytes:
        data = _read_exactly(self._f, n)
        if len(data) != n:
            raise SealError(f"{self._where} is cut short in {what}: not a complete sealed file")
        self._parts.append(data)
        return data

    def text(self, length_bytes: int, what: str) -> str:
        (n,) = struct.unpack(">B" if length_bytes == 1 else ">H", self.take(length_bytes, what))
        if n > MAX_NAME_BYTES:
            raise SealError(f"{self._where}: its {what} is longer than {MAX_NAME_BYTES} bytes")
        try:
            return self.take(n, what).decode()
        except UnicodeDecodeError:
            raise SealError(f"{self._where}: its {what} is not UTF-8") from None


def seal_file(
    keys: KeyRing, group: str, src: StrPath, dst: StrPath, run_id: str, step_key: str
) -> SealedFileInfo:
    """Seal the file ``src`` with key ``group`` for step ``step_key`` of run ``run_id`` into
    ``dst`` (written atomically). SealError without the key; OSError for file problems."""
    keys.require(group)
    header = _Header.new(keys, group, run_id, step_key)
    aead = header.cipher(keys)
    plain = hashlib.sha256()
    plain_size = 0
    with open(src, "rb") as source, _AtomicWriter(Path(dst)) as out:
        out.write(header.raw)
        for index, (segment, final) in enumerate(_segments(source, header.segment_bytes)):
            if index >= MAX_SEGMENTS:
                raise SealError(f"{src} is too large to seal ({MAX_SEGMENTS} segments at most)")
            plain.update(segment)
            plain_size += len(segment)
            out.write(
                aead.encrypt(header.nonce(index), segment, header.associated_data(index, final))
            )
        sealed_size, sealed_sha256 = out.size, out.sha256()
    return SealedFileInfo(
        group, run_id, step_key, plain_size, plain.hexdigest(), sealed_size, sealed_sha256
    )


def open_file(
    keys: KeyRing,
    src: StrPath,
    dst: StrPath,
    run_id: str | None = None,
    step_key: str | None = None,
) -> SealedFileInfo:
    """Open the sealed file ``src`` into ``dst`` (written atomically, only if all of it
    authenticates).

    ``run_id`` and ``step_key``, when given, must be those the file was sealed for; None
    accepts the ones its (authenticated) header names, for a reader that only knows the
    file's digest. Raises SealError, naming the key group, when this ring lacks the key or
    the file is not a sealed file, was sealed with another key, was cut short, or altered.
    """
    where = f"sealed file {src}"
    sealed = hashlib.sha256()
    plain = hashlib.sha256()
    plain_size = 0
    with open(src, "rb") as f:
        source = _HashingReader(f, sealed)
        header = _Header.read(source, where)
        _check_owner(header, where, run_id, step_key)
        keys.require(header.key_group, "this process")
        _check_fingerprint(keys, header, where)
        aead = header.cipher(keys)
        with _AtomicWriter(Path(dst)) as out:
            chunk = header.segment_bytes + TAG_BYTES
            for index, (segment, final) in enumerate(_segments(source, chunk)):
                if index >= MAX_SEGMENTS:
                    raise SealError(f"{where} has more segments than a sealed file can")
                data = _decrypt(aead, header, index, segment, final, where)
                if not final and len(data) != header.segment_bytes:
                    raise SealError(f"{where}: segment {index} is short; the file was altered")
                plain.update(data)
                plain_size += len(data)
                out.write(data)
    return SealedFileInfo(
        header.key_group,
        header.run_id,
        header.step_key,
        plain_size,
        plain.hexdigest(),
        source.size,
        sealed.hexdigest(),
    )


def sealed_file_group(src: StrPath) -> str:
    """The key group a sealed file names (no key needed); SealError if it is not one."""
    with open(src, "rb") as f:
        return _Header.read(f, f"sealed file {src}").key_group


def _check_owner(header: _Header, where: str, run_id: str | None, step_key: str | None) -> None:
    if (run_id is not None and run_id != header.run_id) or (
        step_key is not None and step_key != header.step_key
    ):
        raise SealError(
            f"{where} was sealed for step {header.step_key[:200]!r} of run "
            f"{header.run_id[:200]!r}, not step {str(step_key)[:200]!r} of run "
            f"{str(run_id)[:200]!r}: it was moved from another step"
        )


def _check_fingerprint(keys: KeyRing, header: _Header, where: str) -> None:
    held = keys.fingerprint(header.key_group)
    if held != header.fingerprint:
        raise SealError(
            f"{where} was sealed with key group {header.key_group!r} key {header.fingerprint!r}"
            f", but this process holds key {held!r} for that group: the keys differ"
        )


def _decrypt(
    aead: Any, header: _Header, index: int, segment: bytes, final: bool, where: str
) -> bytes:
    from cryptography.exceptions import InvalidTag

    try:
        data: bytes = aead.decrypt(
            header.nonce(index), segment, header.associated_data(index, final)
        )
    except InvalidTag:
        what = "the last segment" if final else f"segment {index}"
        raise SealError(
            f"{where}: {what} did not authenticate with key group {header.key_group!r}: the "
            "file was cut short, reordered or altered"
        ) from None
    return data


def _segments(f: _Readable, size: int) -> Iterator[tuple[bytes, bool]]:
    """Blocks of ``size`` bytes (the last may be shorter, or empty for an empty source), each
    with whether it is the last: one block of lookahead decides."""
    current = _read_exactly(f, size)
    while True:
        following = _read_exactly(f, size) if len(current) == size else b""
        final = not following
        yield current, final
        if final:
            return
        current = following


def _read_exactly(f: _Readable, n: int) -> bytes:
    parts: list[bytes] = []
    while n > 0:
        part = f.read(n)
        if not part:
            break
        parts.append(part)
        n -= len(part)
    return b"".join(parts)


def _short(data: bytes) -> bytes:
    return struct.pack(">B", len(data)) + data


def _long(data: bytes, what: str) -> bytes:
    if len(data) > MAX_NAME_BYTES:
        raise SealError(f"the {what} is longer than {MAX_NAME_BYTES} bytes")
    return struct.pack(">H", len(data)) + data


class _HashingReader:
    """Reads a file while hashing and counting every byte read."""

    def __init__(self, f: _Readable, digest: Any) -> None:
        self._f = f
        self._digest = digest
        self.size = 0

    def read(self, n: int = -1, /) -> bytes:
        data = self._f.read(n)
        self._digest.update(data)
        self.size += len(data)
        return data


class _AtomicWriter:
    """Writes ``DST.part``; on a clean exit fsyncs and renames it to ``DST``, else deletes it."""

    def __init__(self, dst: Path) -> None:
        self._dst = dst
        self._tmp = dst.with_name(f"{dst.name}.{secrets.token_hex(4)}.part")
        self._f: IO[bytes] | None = None
        self._digest = hashlib.sha256()
        self.size = 0

    def __enter__(self) -> _AtomicWriter:
        self._f = open(self._tmp, "xb")
        return self

    def write(self, data: bytes) -> None:
        assert self._f is not None
        self._f.write(data)
        self._digest.update(data)
        self.size += len(data)

    def sha256(self) -> str:
        return self._digest.hexdigest()

    def __exit__(self, exc_type: object, *rest: object) -> None:
        assert self._f is not None
        try:
            if exc_type is None:
                self._f.flush()
                os.fsync(self._f.fileno())
            self._f.close()
            if exc_type is None:
                os.replace(self._tmp, self._dst)
                fsync_dir(self._dst.parent)
        finally:
            with contextlib.suppress(FileNotFoundError):
                self._tmp.unlink()
