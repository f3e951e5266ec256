"""``unpack_bundle`` fed hypothesis-generated hostile archives.

tests/meridian/test_bundle.py covers each known attack with a hand-made archive; this adds
random ones: tar headers written byte by byte (any member name including ``..``, absolute
paths, backslashes and over-long components; every type flag including links, devices, GNU
long-name and PAX headers and unknown ones; declared sizes that disagree with the data, up
to absurd; any mode), in GNU, PAX or ustar format, gzipped, sometimes truncated or corrupted.

Property: ``unpack_bundle`` either succeeds with everything it wrote inside the destination
(no symlink resolving outside, nothing but files, directories and links) or raises
``BundleError`` and leaves no destination behind -- and in both cases nothing outside the
destination changed.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
from hypothesis import given, reject, settings
from hypothesis import strategies as st

from meridian.core.bundle import unpack_bundle
from meridian.core.errors import BundleError
from tests.fuzz import FUZZ

OUTSIDE = "@OUTSIDE@"  # replaced by the absolute path of a directory next to the destination
PARTS = (
    "a", "b", "pkg", "x.py", "..", ".", "", " ", "é", "\\", "..\\..", "C:", "a\x01b", "-rf",
    "n" * 255, "n" * 256, OUTSIDE,
)  # fmt: skip
TYPES = (
    tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.LNKTYPE, tarfile.SYMTYPE, tarfile.CHRTYPE,
    tarfile.BLKTYPE, tarfile.DIRTYPE, tarfile.FIFOTYPE, tarfile.CONTTYPE, tarfile.GNUTYPE_SPARSE,
    tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
)  # fmt: skip
TarFormat = Literal[0, 1, 2]  # tarfile.USTAR_FORMAT, GNU_FORMAT, PAX_FORMAT
FORMATS: tuple[TarFormat, ...] = (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT)


@dataclass(frozen=True)
class Member:
    name: str
    type: bytes
    linkname: str
    data: bytes
    declared_size: int | None  # None: the length of data
    mode: int


paths = st.one_of(
    st.lists(st.sampled_from(PARTS), min_size=1, max_size=4).map("/".join),
    st.lists(st.sampled_from(PARTS), min_size=1, max_size=3).map(lambda p: "/" + "/".join(p)),
    st.text(max_size=30),
    st.sampled_from(["./", "/", "../escape", f"{OUTSIDE}/pwned", "a/" * 100 + "deep"]),
)
members = st.builds(
    Member,
    name=paths,
    type=st.one_of(
        st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE]),
        st.sampled_from(TYPES),
        st.binary(min_size=1, max_size=1),
    ),
    linkname=st.one_of(paths, st.just("")),
    data=st.one_of(st.binary(max_size=600), st.builds(bytes, st.sampled_from([0, 512, 4096]))),
    declared_size=st.one_of(
        st.none(),
        st.none(),
        st.sampled_from([0, 1, 511, 512, 513, 10**6, 8**11 - 1, 8**11, 2**40, 2**63, 10**30]),
    ),
    mode=st.one_of(st.sampled_from([0o644, 0o755, 0o4777, 0]), st.integers(0, 0o7777)),
)


@st.composite
def archives(draw: st.DrawFn) -> tuple[list[Member], TarFormat, str, int]:
    """(members, tar format, how the archive is damaged, where)."""
    return (
        draw(st.lists(members, min_size=1, max_size=5)),
        draw(st.sampled_from(FORMATS)),
        draw(st.sampled_from(["none", "none", "truncate", "flip", "no-end", "raw-tar"])),
        draw(st.integers(0, 10**6)),
    )


def build(members: list[Member], fmt: TarFormat, damage: str, where: int, outside: Path) -> bytes:
    raw = bytearray()
    for member in members:
        info = tarfile.TarInfo(member.name.replace(OUTSIDE, str(outside)))
        info.type = member.type
        info.linkname = member.linkname.replace(OUTSIDE, str(outside))
        info.size = len(member.data) if member.declared_size is None else member.declared_size
        info.mode = member.mode
        try:
            raw += info.tobuf(fmt, "utf-8", "surrogateescape")
        except (ValueError, UnicodeError, OverflowError):
            reject()  # tarfile cannot even encode this header in this format
        raw += member.data + bytes(-len(member.data) % tarfile.BLOCKSIZE)
    if damage != "no-end":
        raw += bytes(2 * tarfile.BLOCKSIZE)
    if damage == "raw-tar":
        return bytes(raw)
    data = gzip.compress(bytes(raw), mtime=0)
    if damage == "truncate":
        return data[: where % len(data)]
    if damage == "flip":
        i = where % len(data)
        return data[:i] + bytes([data[i] ^ 0x5A]) + data[i + 1 :]
    return data


def tree(root: Path) -> dict[str, tuple[str, bytes]]:
    """Every path under ``root`` with its kind and content (or link target), links unfollowed."""
    found: dict[str, tuple[str, bytes]] = {}
    for directory, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = Path(directory) / name
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                found[str(path)] = ("link", os.readlink(path).encode("utf-8", "surrogateescape"))
            elif stat.S_ISREG(mode):
                found[str(path)] = ("file", path.read_bytes())
            else:
                found[str(path)] = (f"mode {stat.S_IFMT(mode):o}", b"")
    return found


def check_inside(dest: Path) -> None:
    real_dest = Path(os.path.realpath(dest))
    for path_text, (kind, _) in tree(dest).items():
        path = Path(path_text)
        assert kind in ("file", "link") or path.is_dir(), (path, kind)
        resolved = Path(os.path.realpath(path))
        assert resolved == real_dest or real_dest in resolved.parents, (path, resolved)


@pytest.mark.parametrize("limits", ["default", "tight"])
def test_random_archives_raise_only_bundle_error_and_stay_inside(limits: str) -> None:
    kwargs = {"max_unpacked_bytes": 1500, "max_members": 3} if limits == "tight" else {}

    @given(archive=archives())
    def fuzz(archive: tuple[list[Member], TarFormat, str, int]) -> None:
        with tempfile.TemporaryDirectory(prefix="bundle-fuzz-") as scratch:
            base = Path(scratch) / "base"
            (base / "outside").mkdir(parents=True)
            (base / "outside" / "keep.txt").write_bytes(b"keep")
            (base / "work").mkdir()
            dest = base / "work" / "dest"
            data = build(*archive, outside=base / "outside")
            before = tree(base)
            try:
                unpack_bundle(
                    data, dest, expected_sha256=hashlib.sha256(data).hexdigest(), **kwargs
                )
            except Exception as exc:
                if not isinstance(exc, BundleError):
                    raise
                assert not dest.exists(), "a refused bundle left files behind"
            else:
                check_inside(dest)
            after = {p: v for p, v in tree(base).items() if not Path(p).is_relative_to(dest)}
            assert after == before

    settings(FUZZ, max_examples=250)(fuzz)()


# ---- bugs found by the property above -------------------------------------------------------


def _one_member_archive(
    info: tarfile.TarInfo, data: bytes = b"", fmt: TarFormat = tarfile.PAX_FORMAT
) -> bytes:
    raw = info.tobuf(fmt, "utf-8", "surrogateescape") + data
    raw += bytes(-len(raw) % tarfile.BLOCKSIZE) + bytes(2 * tarfile.BLOCKSIZE)
    return gzip.compress(raw, mtime=0)


def test_bug_over_long_member_name_is_a_bundle_error(tmp_path: Path) -> None:
    info = tarfile.TarInfo("n" * 256)
    info.size = 2
    data = _one_member_archive(info, b"ok")
    with pytest.raises(BundleError):
        unpack_bundle(data, tmp_path / "dest", expected_sha256=hashlib.sha256(data).hexdigest())


def test_bug_huge_pax_header_size_is_a_bundle_error(tmp_path: Path) -> None:
    info = tarfile.TarInfo("pax-header")
    info.type = tarfile.XHDTYPE
    info.size = 2**63
    data = _one_member_archive(info, fmt=tarfile.GNU_FORMAT)  # base-256 size field
    with pytest.raises(BundleError):
        unpack_bundle(data, tmp_path / "dest", expected_sha256=hashlib.sha256(data).hexdigest())
    assert not (tmp_path / "dest").exists()
