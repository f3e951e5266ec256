from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from meridian.core.bundle import (
    Bundle,
    bundle_digest,
    is_ignored,
    pack_directory,
    parse_ignore_rules,
    unpack_bundle,
)
from meridian.core.errors import BundleError


def write(root: Path, rel: str, content: str = "x", mode: int = 0o644) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    path.chmod(mode)
    return path


def names(bundle: Bundle) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(bundle.data), mode="r:gz") as tar:
        return tar.getnames()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    write(root, "flows.py", "print('hi')\n")
    write(root, "pkg/__init__.py", "")
    write(root, "pkg/tool.sh", "#!/bin/sh\n", mode=0o750)
    return root


# ---- packing --------------------------------------------------------------------------------


def test_pack_is_deterministic_across_times_and_modes(project: Path, tmp_path: Path) -> None:
    first = pack_directory(project)
    copy = tmp_path / "copy"
    write(copy, "pkg/tool.sh", "#!/bin/sh\n", mode=0o700)  # created in another order
    write(copy, "pkg/__init__.py", "", mode=0o600)
    write(copy, "flows.py", "print('hi')\n", mode=0o664)
    os.utime(copy / "flows.py", (1, 1))
    second = pack_directory(copy)
    assert first == second
    assert first.sha256 == bundle_digest(first.data)
    assert first.file_count == 3


def test_pack_normalises_tar_headers(project: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(pack_directory(project).data), mode="r:gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert list(members) == ["flows.py", "pkg", "pkg/__init__.py", "pkg/tool.sh"]
    assert {m.mtime for m in members.values()} == {0}
    assert {(m.uid, m.gid, m.uname, m.gname) for m in members.values()} == {(0, 0, "", "")}
    assert members["flows.py"].mode == 0o644
    assert members["pkg/tool.sh"].mode == 0o755
    assert members["pkg"].mode == 0o755


def test_content_change_changes_hash(project: Path) -> None:
    before = pack_directory(project).sha256
    write(project, "flows.py", "print('bye')\n")
    assert pack_directory(project).sha256 != before


def test_default_exclusions(project: Path) -> None:
    for rel in [
        ".git/HEAD",
        ".venv/bin/python",
        "venv/pyvenv.cfg",
        "env/pyvenv.cfg",
        "pkg/__pycache__/tool.cpython-311.pyc",
        "pkg/stale.pyc",
        ".mypy_cache/x",
        ".pytest_cache/x",
        ".ruff_cache/x",
        ".tox/x",
        "node_modules/left-pad/index.js",
        ".meridian-dev/db",
        "pkg.egg-info/PKG-INFO",
        ".hg/store",
    ]:
        write(project, rel)
    write(project, "env/settings.py")  # inside a virtualenv (env/pyvenv.cfg), so excluded
    write(project, "environment/settings.py")  # an ordinary package named like a venv
    assert names(pack_directory(project)) == [
        "environment",
        "environment/settings.py",
        "flows.py",
        "pkg",
        "pkg/__init__.py",
        "pkg/tool.sh",
    ]


def test_meridianignore(project: Path) -> None:
    write(project, "data/big.csv")
    write(project, "data/keep.csv")
    write(project, "sub/data/nested.txt")
    write(project, "notes.md")
    write(project, "docs/guide.md")
    write(project, "build")  # a file, so the dir-only rule must not match it
    write(project, "sub/build/out.o")
    write(project, ".meridianignore", "# comment\n\n/data/*\n!/data/keep.csv\n*.md\nbuild/\n")
    assert names(pack_directory(project)) == [
        ".meridianignore",
        "build",
        "data",
        "data/keep.csv",
        "docs",
        "flows.py",
        "pkg",
        "pkg/__init__.py",
        "pkg/tool.sh",
        "sub",
        "sub/data",
        "sub/data/nested.txt",
    ]


@pytest.mark.parametrize(
    ("pattern", "path", "is_dir", "ignored"),
    [
        ("*.log", "a/b/c.log", False, True),
        ("/*.log", "a/c.log", False, False),
        ("/*.log", "c.log", False, True),
        ("logs/", "a/logs", True, True),
        ("logs/", "a/logs", False, False),
        ("a/*/c", "a/b/c", False, True),
        ("a/*/c", "a/b/x/c", False, False),
        ("a/**/c", "a/b/x/c", False, True),
        ("file?.txt", "file1.txt", False, True),
        ("file?.txt", "file10.txt", False, False),
        ("[ab].txt", "a.txt", False, False),  # brackets are literal in our subset
    ],
)
def test_ignore_patterns(pattern: str, path: str, is_dir: bool, ignored: bool) -> None:
    assert is_ignored(parse_ignore_rules(pattern), path, is_dir) is ignored


def test_internal_symlinks_are_kept(project: Path, tmp_path: Path) -> None:
    (project / "link.py").symlink_to("flows.py")
    (project / "pkgalias").symlink_to(project / "pkg")  # absolute, but inside the root
    bundle = pack_directory(project)
    with tarfile.open(fileobj=io.BytesIO(bundle.data), mode="r:gz") as tar:
        links = {m.name: m.linkname for m in tar.getmembers() if m.issym()}
    assert links == {"link.py": "flows.py", "pkgalias": "pkg"}
    dest = tmp_path / "out"
    unpack_bundle(bundle.data, dest, expected_sha256=bundle.sha256)
    assert (dest / "link.py").read_text() == "print('hi')\n"
    assert (dest / "pkgalias" / "tool.sh").exists()


def test_external_symlink_is_refused(project: Path, tmp_path: Path) -> None:
    write(tmp_path, "secret.txt")
    (project / "leak").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(BundleError, match=r"symlink leak -> .*points outside"):
        pack_directory(project)


def test_packed_size_limit(project: Path) -> None:
    write(project, "noise.bin", os.urandom(40_000).hex())
    with pytest.raises(BundleError) as info:
        pack_directory(project, max_size=10_000)
    message = str(info.value)
    assert "compressed, above the limit of 0.0 MiB" in message
    assert ".meridianignore" in message


def test_unpacked_size_limit(project: Path) -> None:
    write(project, "zeros.txt", "0" * 100_000)
    with pytest.raises(BundleError, match=r"above the 0\.0 MiB limit"):
        pack_directory(project, max_unpacked_bytes=50_000)


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not a directory"):
        pack_directory(tmp_path / "missing")


# ---- unpacking ------------------------------------------------------------------------------


def test_round_trip_preserves_content_and_exec_bit(project: Path, tmp_path: Path) -> None:
    bundle = pack_directory(project)
    dest = tmp_path / "out"
    unpack_bundle(bundle.data, dest, expected_sha256=bundle.sha256)
    assert (dest / "flows.py").read_text() == "print('hi')\n"
    assert os.access(dest / "pkg" / "tool.sh", os.X_OK)
    assert not os.access(dest / "flows.py", os.X_OK)
    assert pack_directory(dest) == bundle


def test_hash_mismatch_is_refused_before_reading(project: Path, tmp_path: Path) -> None:
    bundle = pack_directory(project)
    with pytest.raises(BundleError, match=r"hash mismatch: expected 0+, got "):
        unpack_bundle(bundle.data, tmp_path / "out", expected_sha256="0" * 64)
    assert not (tmp_path / "out").exists()


def test_oversized_bundle_is_refused(project: Path, tmp_path: Path) -> None:
    bundle = pack_directory(project)
    with pytest.raises(BundleError, match="above the limit"):
        unpack_bundle(bundle.data, tmp_path / "o", expected_sha256=bundle.sha256, max_size=10)


def test_non_empty_destination_is_refused(project: Path, tmp_path: Path) -> None:
    bundle = pack_directory(project)
    write(tmp_path, "out/existing")
    with pytest.raises(BundleError, match="not empty"):
        unpack_bundle(bundle.data, tmp_path / "out", expected_sha256=bundle.sha256)


def test_garbage_is_refused(tmp_path: Path) -> None:
    data = b"definitely not gzip"
    with pytest.raises(BundleError, match=r"not a valid tar\.gz"):
        unpack_bundle(data, tmp_path / "out", expected_sha256=bundle_digest(data))


# Malicious archives, built by hand.


def evil(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def file_member(name: str, data: bytes = b"pwned") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def link_member(
    name: str, target: str, kind: bytes = tarfile.SYMTYPE
) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def special_member(name: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    return info, None


def unpack_evil(data: bytes, dest: Path, **limits: int) -> None:
    unpack_bundle(data, dest, expected_sha256=bundle_digest(data), **limits)


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([file_member("../escape.txt")], r"'\.\./escape\.txt' has a '\.\.' path component"),
        ([file_member("ok/../../escape.txt")], r"'ok/\.\./\.\./escape\.txt' has a '\.\.'"),
        ([file_member("/etc/cron.d/evil")], r"'/etc/cron\.d/evil' has an absolute"),
        ([link_member("innocent", "/etc/passwd")], r"'innocent' links to absolute path"),
        ([link_member("up", "../../outside")], r"'up' links outside the bundle"),
        ([link_member("a/b/up", "../../..")], r"'a/b/up' links outside the bundle"),
        ([link_member("hard", "../../etc/passwd", tarfile.LNKTYPE)], r"'hard' links outside"),
        ([link_member("hard", "missing.txt", tarfile.LNKTYPE)], r"'hard' is a hardlink to"),
        ([special_member("dev", tarfile.CHRTYPE)], r"'dev' is a device, fifo"),
        ([special_member("blk", tarfile.BLKTYPE)], r"'blk' is a device, fifo"),
        ([special_member("pipe", tarfile.FIFOTYPE)], r"'pipe' is a device, fifo"),
        (
            [link_member("dir", "sub"), file_member("dir/x.py")],
            r"'dir/x\.py' lies under a link or file",
        ),
        ([file_member("a"), file_member("a")], r"'a' appears twice"),
        (
            [file_member("pkg/x.py"), link_member("pkg", "elsewhere")],
            r"'pkg' appears twice or replaces a directory",
        ),
    ],
)
def test_malicious_members_are_refused(
    tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], message: str
) -> None:
    dest = tmp_path / "out"
    with pytest.raises(BundleError, match=message):
        unpack_evil(evil(*members), dest)
    assert not dest.exists()
    assert not (tmp_path / "escape.txt").exists()


def test_symlink_chain_escape_is_refused(tmp_path: Path) -> None:
    # Textually "l2/x/../.." is ".", but l2 -> "." makes it resolve to the parent of dest.
    data = evil(link_member("l2", "."), link_member("l1", "l2/x/../.."))
    dest = tmp_path / "out"
    with pytest.raises(BundleError, match="'l1' is a symlink resolving outside"):
        unpack_evil(data, dest)
    assert not dest.exists()


def test_hardlink_inside_the_bundle_becomes_a_copy(tmp_path: Path) -> None:
    data = evil(file_member("a.txt", b"hello"), link_member("b.txt", "a.txt", tarfile.LNKTYPE))
    unpack_evil(data, tmp_path / "out")
    assert (tmp_path / "out" / "b.txt").read_bytes() == b"hello"
    assert (tmp_path / "out" / "a.txt").stat().st_ino != (tmp_path / "out" / "b.txt").stat().st_ino


def test_zip_bomb_is_refused_from_the_header(tmp_path: Path) -> None:
    # 2 MiB of zeros compresses to a few KiB; the bound is checked before any data is written.
    data = evil(file_member("bomb.bin", bytes(2 * 1024 * 1024)))
    assert len(data) < 10_000
    with pytest.raises(BundleError, match=r"'bomb\.bin' takes the unpacked size above the limit"):
        unpack_evil(data, tmp_path / "out", max_unpacked_bytes=1024 * 1024)
    assert not (tmp_path / "out").exists()


def test_archives_made_with_tar_dot_are_accepted(tmp_path: Path) -> None:
    root = tarfile.TarInfo("./")
    root.type = tarfile.DIRTYPE
    unpack_evil(evil((root, None), file_member("./flows.py", b"ok")), tmp_path / "out")
    assert (tmp_path / "out" / "flows.py").read_bytes() == b"ok"


def test_too_many_members_is_refused(tmp_path: Path) -> None:
    data = evil(*(file_member(f"f{i}", b"") for i in range(20)))
    with pytest.raises(BundleError, match="more than 10 members"):
        unpack_evil(data, tmp_path / "out", max_members=10)


def test_truncated_archive_is_refused(project: Path, tmp_path: Path) -> None:
    write(project, "big.txt", os.urandom(50_000).hex())
    data = pack_directory(project).data[:-2000]
    with pytest.raises(BundleError, match=r"not a valid tar\.gz"):
        unpack_evil(data, tmp_path / "out")
    assert not (tmp_path / "out").exists()
