"""Sealed files (meridian.core.sealedfile): round trips at segment edges, and every way a
sealed file can be cut, reordered, altered, moved or opened with the wrong key fails."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from meridian.core.errors import SealError
from meridian.core.sealedfile import (
    SEGMENT_BYTES,
    TAG_BYTES,
    open_file,
    seal_file,
    sealed_file_group,
)
from meridian.core.sealing import KeyRing

GROUP = "eu-sites"
RUN, STEP = "run-1", "extract#1"


@pytest.fixture
def keys() -> KeyRing:
    return KeyRing({GROUP: os.urandom(64)})


def write(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def sealed(tmp_path: Path, keys: KeyRing, size: int) -> tuple[Path, bytes]:
    plain = write(tmp_path / "plain", size)
    seal_file(keys, GROUP, tmp_path / "plain", tmp_path / "sealed", RUN, STEP)
    return tmp_path / "sealed", plain


def header_length(tmp_path: Path, keys: KeyRing) -> int:
    """An empty file seals to the header and one empty final segment (its tag alone)."""
    (tmp_path / "empty").write_bytes(b"")
    info = seal_file(keys, GROUP, tmp_path / "empty", tmp_path / "empty.sealed", RUN, STEP)
    return info.sealed_size - TAG_BYTES


@pytest.mark.parametrize(
    "size", [0, 1, 4095, SEGMENT_BYTES - 1, SEGMENT_BYTES, SEGMENT_BYTES + 1, 2 * SEGMENT_BYTES]
)
def test_round_trip_at_segment_edges(tmp_path: Path, keys: KeyRing, size: int) -> None:
    plain = write(tmp_path / "plain", size)
    info = seal_file(keys, GROUP, tmp_path / "plain", tmp_path / "sealed", RUN, STEP)
    stored = (tmp_path / "sealed").read_bytes()
    assert (info.plaintext_size, info.sealed_size) == (size, len(stored))
    segments = max(1, -(-size // SEGMENT_BYTES))
    assert len(stored) == header_length(tmp_path, keys) + size + segments * TAG_BYTES
    if size >= 64:
        assert plain[:64] not in stored

    opened = open_file(keys, tmp_path / "sealed", tmp_path / "opened", RUN, STEP)
    assert (tmp_path / "opened").read_bytes() == plain
    assert opened == info  # the same digests and sizes on both sides
    assert sealed_file_group(tmp_path / "sealed") == GROUP


def test_sealing_twice_gives_different_bytes(tmp_path: Path, keys: KeyRing) -> None:
    write(tmp_path / "plain", 1000)
    a = seal_file(keys, GROUP, tmp_path / "plain", tmp_path / "a", RUN, STEP)
    b = seal_file(keys, GROUP, tmp_path / "plain", tmp_path / "b", RUN, STEP)
    assert a.sealed_sha256 != b.sealed_sha256
    assert a.plaintext_sha256 == b.plaintext_sha256


def expect_refused(keys: KeyRing, tmp_path: Path, src: Path, match: str, **owner: str) -> None:
    dst = tmp_path / "opened"
    with pytest.raises(SealError, match=match):
        open_file(keys, src, dst, **owner)  # type: ignore[arg-type]
    assert not dst.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


def test_truncation_is_detected_at_a_segment_boundary_and_inside_one(
    tmp_path: Path, keys: KeyRing
) -> None:
    src, _ = sealed(tmp_path, keys, 2 * SEGMENT_BYTES + 10)
    data = src.read_bytes()
    last_segment = 10 + TAG_BYTES
    cut = tmp_path / "cut"
    # The whole last segment gone: the (full) second segment now ends the file.
    cut.write_bytes(data[:-last_segment])
    expect_refused(keys, tmp_path, cut, "the last segment did not authenticate")
    cut.write_bytes(data[:-3])
    expect_refused(keys, tmp_path, cut, "did not authenticate")
    cut.write_bytes(data[:20])
    expect_refused(keys, tmp_path, cut, "cut short")


def test_reordered_or_duplicated_segments_are_detected(tmp_path: Path, keys: KeyRing) -> None:
    src, _ = sealed(tmp_path, keys, 2 * SEGMENT_BYTES + 10)
    data = src.read_bytes()
    seg = SEGMENT_BYTES + TAG_BYTES
    header = len(data) - 2 * seg - (10 + TAG_BYTES)
    first, second = data[header : header + seg], data[header + seg : header + 2 * seg]
    tail = data[header + 2 * seg :]
    bad = tmp_path / "bad"
    bad.write_bytes(data[:header] + second + first + tail)
    expect_refused(keys, tmp_path, bad, "segment 0 did not authenticate")
    bad.write_bytes(data[:header] + first + first + tail)
    expect_refused(keys, tmp_path, bad, "segment 1 did not authenticate")


def test_a_flipped_byte_anywhere_is_detected(tmp_path: Path, keys: KeyRing) -> None:
    src, _ = sealed(tmp_path, keys, 3000)
    data = bytearray(src.read_bytes())
    bad = tmp_path / "bad"
    for at in (len(data) - 1, len(data) - 3000, len(data) - 3016 - 1):
        altered = bytearray(data)
        altered[at] ^= 0x01
        bad.write_bytes(bytes(altered))
        expect_refused(keys, tmp_path, bad, "did not authenticate")


def test_a_file_moved_to_another_step_is_refused(tmp_path: Path, keys: KeyRing) -> None:
    src, _ = sealed(tmp_path, keys, 100)
    expect_refused(keys, tmp_path, src, "sealed for step 'extract#1'", run_id=RUN, step_key="x#1")
    expect_refused(keys, tmp_path, src, "of run 'run-1'", run_id="run-2", step_key=STEP)
    # Editing the header to name another step breaks every segment's authentication.
    data = src.read_bytes()
    edited = data.replace(STEP.encode(), b"extract#2", 1)
    (tmp_path / "edited").write_bytes(edited)
    expect_refused(
        keys, tmp_path, tmp_path / "edited", "did not authenticate", step_key="extract#2"
    )


def test_the_wrong_key_or_no_key_is_named(tmp_path: Path, keys: KeyRing) -> None:
    src, _ = sealed(tmp_path, keys, 100)
    other = KeyRing({GROUP: os.urandom(64)})
    expect_refused(other, tmp_path, src, "the keys differ")
    expect_refused(KeyRing(), tmp_path, src, "no key for key group 'eu-sites'")
    with pytest.raises(SealError, match="no key for key group 'us'"):
        seal_file(keys, "us", src, tmp_path / "x", RUN, STEP)


def test_what_is_not_a_sealed_file_is_refused(tmp_path: Path, keys: KeyRing) -> None:
    plain = tmp_path / "plain"
    plain.write_bytes(b"hello world, this is not sealed at all" * 10)
    expect_refused(keys, tmp_path, plain, "not a sealed Meridian file")
    with pytest.raises(SealError, match="not a sealed Meridian file"):
        sealed_file_group(plain)
    src, _ = sealed(tmp_path, keys, 10)
    data = bytearray(src.read_bytes())
    data[6] = 9  # the format version
    (tmp_path / "v9").write_bytes(bytes(data))
    expect_refused(keys, tmp_path, tmp_path / "v9", "format version 9")
