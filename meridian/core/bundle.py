"""Content-addressed code bundles: packing a project directory and unpacking it safely.

A bundle is a deterministic ``tar.gz`` (sorted paths, zeroed owners and times, fixed modes,
gzip header without name or time), so the same files always give the same SHA-256 and a
control plane stores each flow version once. Packing skips VCS metadata, virtualenvs, caches and
whatever ``.meridianignore`` lists. Unpacking treats the archive as hostile: it checks the hash
first, then refuses anything that could write outside the destination or exhaust the disk.

Determinism holds for one zlib implementation; a different zlib may compress the same tar
stream differently, which costs a re-upload, never correctness.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import posixpath
import re
import shutil
import stat
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from meridian.core.errors import BundleError

DEFAULT_MAX_BUNDLE_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_UNPACKED_BYTES = 512 * 1024 * 1024
DEFAULT_MAX_MEMBERS = 100_000
IGNORE_FILE = ".meridianignore"

_EXCLUDED_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        ".venv",
        "__pycache__",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        ".tox",
        "node_modules",
        ".meridian-dev",
    }
)
_EXCLUDED_FILE_SUFFIXES = (".pyc", ".pyo")
_GZIP_LEVEL = 6
# What the tarfile/gzip/zlib stack raises for a damaged archive (gzip.BadGzipFile is an OSError).
_CORRUPT = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)


@dataclass(frozen=True)
class Bundle:
    """A packed bundle: its hex SHA-256, the ``tar.gz`` bytes, and how many files it holds."""

    sha256: str
    data: bytes
    file_count: int


def bundle_digest(data: bytes) -> str:
    """The content address of a bundle: lowercase hex SHA-256 of its bytes."""
    return hashlib.sha256(data).hexdigest()


# ---- ignore rules ---------------------------------------------------------------------------


@dataclass(frozen=True)
class IgnoreRule:
    """One line of ``.meridianignore`` (a gitignore subset)."""

    regex: re.Pattern[str]
    negate: bool
    dir_only: bool
    anchored: bool  # matched against the whole relative path, not just the last component


def parse_ignore_rules(text: str) -> tuple[IgnoreRule, ...]:
    """Parse gitignore-style lines: ``#`` comments, ``*``/``?``/``**`` globs, trailing ``/`` for
    directories, a ``/`` anywhere but the end anchors to the root, ``!`` re-includes."""
    rules: list[IgnoreRule] = []
    for raw in text.splitlines():
        line = raw.rstrip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        line = line[1:] if negate else line
        dir_only = line.endswith("/")
        line = line.rstrip("/")
        anchored = "/" in line
        line = line.lstrip("/")
        if line:
            rules.append(IgnoreRule(_glob_regex(line), negate, dir_only, anchored))
    return tuple(rules)


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        else:
            char = pattern[i]
            out.append("[^/]*" if char == "*" else "[^/]" if char == "?" else re.escape(char))
            i += 1
    return re.compile("".join(out) + r"\Z")


def is_ignored(rules: tuple[IgnoreRule, ...], rel_path: str, is_dir: bool) -> bool:
    """Whether ``rel_path`` (posix, relative to the root) is ignored; the last matching rule
    wins, as in gitignore."""
    ignored = False
    name = rel_path.rsplit("/", 1)[-1]
    for rule in rules:
        if rule.dir_only and not is_dir:
            continue
        if rule.regex.match(rel_path if rule.anchored else name):
            ignored = not rule.negate
    return ignored


def _always_excluded(path: Path, name: str, is_dir: bool) -> bool:
    if not is_dir:
        return name.endswith(_EXCLUDED_FILE_SUFFIXES)
    # Any directory holding pyvenv.cfg is a virtualenv, whatever it is called (venv, env, ...).
    return name in _EXCLUDED_DIRS or name.endswith(".egg-info") or (path / "pyvenv.cfg").exists()


# ---- packing --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    rel: str
    path: Path
    kind: str  # "dir" | "file" | "symlink"
    size: int = 0
    executable: bool = False
    link_target: str = ""


def pack_directory(
    root: Path,
    *,
    max_size: int = DEFAULT_MAX_BUNDLE_BYTES,
    max_unpacked_bytes: int = DEFAULT_MAX_UNPACKED_BYTES,
) -> Bundle:
    """Pack ``root`` into a deterministic bundle.

    Raises:
        BundleError: ``root`` is not a directory, a symlink points outside it, or the bundle is
            larger than ``max_size`` packed or ``max_unpacked_bytes`` unpacked.
    """
    if not root.is_dir():
        raise BundleError(f"cannot bundle {root}: not a directory")
    real_root = Path(os.path.realpath(root))
    ignore_file = real_root / IGNORE_FILE
    rules = parse_ignore_rules(ignore_file.read_text()) if ignore_file.is_file() else ()
    entries = sorted(_walk(real_root, real_root, rules), key=lambda e: e.rel)
    total = sum(e.size for e in entries)
    if total > max_unpacked_bytes:
        raise BundleError(
            f"{root} holds {_mib(total)} of files to bundle, above the {_mib(max_unpacked_bytes)} "
            f"limit; exclude data, build outputs and dependencies with {IGNORE_FILE}"
        )
    data = _write_tar_gz(root, entries, max_size)
    file_count = sum(1 for e in entries if e.kind != "dir")
    return Bundle(sha256=bundle_digest(data), data=data, file_count=file_count)


def _walk(real_root: Path, directory: Path, rules: tuple[IgnoreRule, ...]) -> Iterator[_Entry]:
    try:
        with os.scandir(directory) as scan:
            children = sorted(scan, key=lambda d: d.name)
    except OSError as exc:
        raise BundleError(f"cannot bundle {directory}: {exc}") from exc
    for child in children:
        path = Path(child.path)
        rel = path.relative_to(real_root).as_posix()
        is_link = child.is_symlink()
        is_dir = not is_link and child.is_dir()
        if _always_excluded(path, child.name, is_dir) or is_ignored(rules, rel, is_dir):
            continue
        if is_link:
            yield _Entry(rel, path, "symlink", link_target=_checked_link(real_root, path))
        elif is_dir:
            yield _Entry(rel, path, "dir")
            yield from _walk(real_root, path, rules)
        elif child.is_file():
            info = child.stat()
            executable = bool(info.st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH))
            yield _Entry(rel, path, "file", size=info.st_size, executable=executable)
        # Sockets, fifos and devices are never code; they are skipped.


def _checked_link(real_root: Path, link: Path) -> str:
    """Return the link target to store (relative), refusing links that leave the root."""
    target = os.readlink(link)
    resolved = Path(os.path.realpath(link))
    if resolved != real_root and real_root not in resolved.parents:
        raise BundleError(
            f"cannot bundle symlink {link.relative_to(real_root).as_posix()} -> {target}: it "
            f"points outside {real_root}; copy the file in or add the link to {IGNORE_FILE}"
        )
    if os.path.isabs(target):
        # Absolute links inside the root only work where the root was; store them relative.
        target = os.path.relpath(resolved, link.parent)
    return Path(target).as_posix()


def _too_large(root: Path, size: int, max_size: int, *, complete: bool) -> BundleError:
    size_text = _mib(size) if complete else f"more than {_mib(size)}"
    return BundleError(
        f"code bundle of {root} is {size_text} compressed, above the limit of {_mib(max_size)}; "
        f"list large files or directories in {IGNORE_FILE} at the project root"
    )


def _write_tar_gz(root: Path, entries: list[_Entry], max_size: int) -> bytes:
    buffer = io.BytesIO()
    # filename="" and mtime=0 keep the gzip header free of anything that varies between packs.
    with (
        gzip.GzipFile(
            filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=_GZIP_LEVEL
        ) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for entry in entries:
            info = _tar_info(entry)
            if entry.kind == "file":
                _add_file(tar, info, entry.path)
            else:
                tar.addfile(info)
            # Stop early rather than hold a huge archive in memory just to refuse it.
            if buffer.tell() > max_size:
                raise _too_large(root, buffer.tell(), max_size, complete=False)
    data = buffer.getvalue()
    if len(data) > max_size:
        raise _too_large(root, len(data), max_size, complete=True)
    return data


def _add_file(tar: tarfile.TarFile, info: tarfile.TarInfo, path: Path) -> None:
    try:
        with path.open("rb") as fh:
            tar.addfile(info, fh)
    except OSError as exc:
        raise BundleError(f"cannot bundle {path}: {exc} (did it change while packing?)") from exc


def _tar_info(entry: _Entry) -> tarfile.TarInfo:
    info = tarfile.TarInfo(entry.rel)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if entry.kind == "dir":
        info.type, info.mode = tarfile.DIRTYPE, 0o755
    elif entry.kind == "symlink":
        info.type, info.mode, info.linkname = tarfile.SYMTYPE, 0o777, entry.link_target
    else:
        info.mode = 0o755 if entry.executable else 0o644
        info.size = entry.size
    return info


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MiB"


# ---- unpacking ------------------------------------------------------------------------------


def unpack_bundle(
    data: bytes,
    dest: Path,
    *,
    expected_sha256: str,
    max_size: int = DEFAULT_MAX_BUNDLE_BYTES,
    max_unpacked_bytes: int = DEFAULT_MAX_UNPACKED_BYTES,
    max_members: int = DEFAULT_MAX_MEMBERS,
) -> None:
    """Verify and unpack a bundle into ``dest`` (which must be missing or empty).

    Every member is checked before anything is written, so a refused bundle leaves no files
    behind; if writing fails half-way, ``dest`` is removed again.

    Raises:
        BundleError: size or hash mismatch, not a tar.gz, or an unsafe member (named).
    """
    if len(data) > max_size:
        raise BundleError(f"bundle is {_mib(len(data))}, above the limit of {_mib(max_size)}")
    actual = bundle_digest(data)
    if actual != expected_sha256:
        raise BundleError(f"bundle hash mismatch: expected {expected_sha256}, got {actual}")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BundleError(f"cannot unpack bundle into {dest}: it exists and is not empty")
    members = _checked_members(data, max_unpacked_bytes, max_members)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        _extract(data, members, dest)
        _check_links_stay_inside(members, dest)
    except _CORRUPT as exc:
        shutil.rmtree(dest, ignore_errors=True)
        raise BundleError(f"bundle is not a valid tar.gz archive: {exc}") from exc
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def _open_tar(data: bytes) -> tarfile.TarFile:
    try:
        return tarfile.open(fileobj=io.BytesIO(data), mode="r:gz")
    except (*_CORRUPT, OSError) as exc:
        raise BundleError(f"bundle is not a valid tar.gz archive: {exc}") from exc


class _CappedReader(io.RawIOBase):
    """The decompressed archive, refusing any single read beyond what may be unpacked: a
    header that declares an absurd size (PAX/GNU long names) fails here instead of making
    tarfile allocate it."""

    def __init__(self, source: gzip.GzipFile, limit: int) -> None:
        self._source = source
        self._left = limit

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or size > self._left:
            raise BundleError("bundle declares more data than a bundle may unpack")
        chunk = self._source.read(size)
        self._left -= len(chunk)
        return chunk


def _checked_members(data: bytes, max_unpacked_bytes: int, max_members: int) -> dict[str, str]:
    """Validate every header; return ``{normalised name: kind}`` in archive order."""
    members: dict[str, str] = {}
    total = count = 0
    # Headers are 512-byte blocks: the archive may hold that much beyond the file contents.
    limit = max_unpacked_bytes + 1024 * (max_members + 4)
    try:
        gz = gzip.GzipFile(fileobj=io.BytesIO(data), mode="rb")
        tar = tarfile.open(fileobj=_CappedReader(gz, limit), mode="r|")  # noqa: SIM115 - closed by the with below
    except (*_CORRUPT, OSError) as exc:
        raise BundleError(f"bundle is not a valid tar.gz archive: {exc}") from exc
    with tar:
        while True:
            try:
                info = tar.next()
            except (*_CORRUPT, OverflowError, MemoryError, ValueError) as exc:
                raise BundleError(f"bundle is not a valid tar.gz archive: {exc}") from exc
            if info is None:
                return members
            count += 1
            if _is_root_entry(info):
                continue
            if count > max_members:
                raise BundleError(f"bundle has more than {max_members} members (at {info.name!r})")
            name = _safe_name(info.name)
            kind = _member_kind(info, name)
            total += info.size if kind == "file" else 0
            if total > max_unpacked_bytes:
                raise BundleError(
                    f"bundle member {info.name!r} takes the unpacked size above the limit of "
                    f"{_mib(max_unpacked_bytes)}"
                )
            _check_placement(members, name, info, kind)
            members[name] = kind
            _register_parents(members, name)


def _is_root_entry(info: tarfile.TarInfo) -> bool:
    """``tar -C dir .`` archives start with a "./" entry; it names dest itself."""
    return info.isdir() and info.name.strip("/") in ("", ".")


def _register_parents(members: dict[str, str], name: str) -> None:
    """Parents are created implicitly; recording them stops a later member from replacing
    one of them with a symlink."""
    parts = name.split("/")
    for i in range(1, len(parts)):
        members.setdefault("/".join(parts[:i]), "dir")


def _safe_name(raw: str) -> str:
    if not raw or raw.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", raw) or "\x00" in raw:
        raise BundleError(f"bundle member {raw!r} has an absolute or empty path")
    parts = [p for p in raw.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise BundleError(f"bundle member {raw!r} has a '..' path component")
    if not parts:
        raise BundleError(f"bundle member {raw!r} has an empty path")
    if any(len(p.encode("utf-8", "surrogateescape")) > 255 for p in parts) or len(raw) > 4096:
        raise BundleError(f"bundle member {raw[:120]!r} has a path part longer than 255 bytes")
    return "/".join(parts)


def _member_kind(info: tarfile.TarInfo, name: str) -> str:
    if info.isreg():
        return "file"
    if info.isdir():
        return "dir"
    if info.issym() or info.islnk():
        _check_link_target(info, name)
        return "symlink" if info.issym() else "hardlink"
    raise BundleError(f"bundle member {info.name!r} is a device, fifo or other special file")


def _check_link_target(info: tarfile.TarInfo, name: str) -> None:
    target = info.linkname
    if not target or os.path.isabs(target) or target.startswith("\\"):
        raise BundleError(f"bundle member {info.name!r} links to absolute path {target!r}")
    # A hardlink names another member (relative to the archive root); a symlink is relative to
    # the directory that holds it.
    base = "" if info.islnk() else posixpath.dirname(name)
    resolved = posixpath.normpath(posixpath.join(base, target))
    if resolved == ".." or resolved.startswith("../"):
        raise BundleError(f"bundle member {info.name!r} links outside the bundle ({target!r})")


def _check_placement(members: dict[str, str], name: str, info: tarfile.TarInfo, kind: str) -> None:
    if name in members and not (kind == "dir" and members[name] == "dir"):
        raise BundleError(f"bundle member {info.name!r} appears twice or replaces a directory")
    parts = name.split("/")
    for i in range(1, len(parts)):
        parent = members.get("/".join(parts[:i]))
        # Writing through a symlinked directory could land anywhere it points to.
        if parent is not None and parent != "dir":
            raise BundleError(f"bundle member {info.name!r} lies under a link or file")
    if kind == "hardlink":
        target = _safe_name(info.linkname)
        if members.get(target) != "file":
            raise BundleError(
                f"bundle member {info.name!r} is a hardlink to {info.linkname!r}, which is not "
                "an earlier regular file in the bundle"
            )


def _extract(data: bytes, members: dict[str, str], dest: Path) -> None:
    with _open_tar(data) as tar:
        for info in tar:
            if _is_root_entry(info):
                continue
            name = _safe_name(info.name)
            path = dest / name
            kind = members[name]
            if kind == "dir":
                path.mkdir(mode=0o755, parents=True, exist_ok=True)
                continue
            path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            if kind == "symlink":
                os.symlink(info.linkname, path)
            elif kind == "hardlink":
                # A copy, not a link: the unpacked tree must not share inodes with anything.
                shutil.copyfile(dest / _safe_name(info.linkname), path)
                os.chmod(path, 0o644)
            else:
                _write_member(tar, info, path)


def _write_member(tar: tarfile.TarFile, info: tarfile.TarInfo, path: Path) -> None:
    source = tar.extractfile(info)
    if source is None:
        raise BundleError(f"bundle member {info.name!r} has no data")
    mode = 0o755 if info.mode & 0o111 else 0o644
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with source, os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(source, out)


def _check_links_stay_inside(members: dict[str, str], dest: Path) -> None:
    """Textual checks cannot see through chains of symlinks; the file system can."""
    real_dest = Path(os.path.realpath(dest))
    for name, kind in members.items():
        if kind != "symlink":
            continue
        resolved = Path(os.path.realpath(dest / name))
        if resolved != real_dest and real_dest not in resolved.parents:
            raise BundleError(f"bundle member {name!r} is a symlink resolving outside the bundle")


__all__ = [
    "DEFAULT_MAX_BUNDLE_BYTES",
    "DEFAULT_MAX_MEMBERS",
    "DEFAULT_MAX_UNPACKED_BYTES",
    "IGNORE_FILE",
    "Bundle",
    "IgnoreRule",
    "bundle_digest",
    "is_ignored",
    "pack_directory",
    "parse_ignore_rules",
    "unpack_bundle",
]
