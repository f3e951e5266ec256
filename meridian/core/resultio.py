"""How the step executor hands back a step's result, and reads the results its inputs name.

Results (``encode_result``): JSON under the policy's inline threshold travels as
``result_json``; anything else (JSON at or above the threshold, a DataFrame or Arrow table as
Parquet, a pickle the step opted in to, or any result of a step that names a store) is written
to ``<work dir>/result.bin`` and described by a :class:`~meridian.core.stepfiles.ResultFile`.
JSON is encoded piece by piece and kept in memory only up to the threshold; past it, the pieces
go to the file. The file is written atomically (temporary name, fsync, rename, fsync of the
directory) and its sha256 is computed on the way out, so it is never read back.

Inputs (``load_input_refs``): each ``{"$meridian_ref": ...}`` marker in the step's arguments
is replaced by the value loaded from the input file the agent materialized for its sha256.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from meridian.core import serializers
from meridian.core.durable import fsync_dir
from meridian.core.errors import ValidationError
from meridian.core.resultref import ResultRef, replace_ref_markers
from meridian.core.stepfiles import RESULT_FILE, InputFile, ResultFile, ResultPolicy


class ResultError(Exception):
    """The result cannot be handed back as the policy and provider allow; says why."""


class InputRefError(Exception):
    """An input reference cannot be resolved to its file; says why."""


# JSON text is buffered up to this many bytes before it goes to the result file.
_WRITE_BYTES = 64 * 1024


def encode_result(value: Any, policy: ResultPolicy | None, work_dir: Path | None) -> dict[str, Any]:
    """The outcome fields for a returned ``value``: ``{"result_json": text}`` or
    ``{"result_file": {...}}``.

    ``policy`` None (a spec from an agent that predates result files) keeps the old contract:
    JSON inline, whatever its size. ``work_dir`` None (the spec came from an environment
    variable: a container) means no file can be handed back.

    Raises:
        ResultError: the value cannot be serialized as asked, or it would go to a file and
            there is no work dir.
    """
    if policy is None:
        try:
            return {"result_json": json.dumps(value, allow_nan=False)}
        except (TypeError, ValueError) as exc:
            raise ResultError(f"the result is not JSON-serializable: {exc}") from None
    requested = policy.serializer or None
    try:
        name = serializers.choose(value, requested, allow_pickle=policy.allow_pickle)
    except serializers.SerializerError as exc:
        raise ResultError(str(exc)) from None
    if name != serializers.JSON:
        target = _file_target(work_dir, policy, f"it is serialized as {name}")
        return {"result_file": _write_file(target, lambda out: _serialize(value, out, name))}
    return _encode_json(value, policy, work_dir)


def _encode_json(value: Any, policy: ResultPolicy, work_dir: Path | None) -> dict[str, Any]:
    # The same text inline or in the file: default separators, as results always had.
    chunks = json.JSONEncoder(allow_nan=False, ensure_ascii=False).iterencode(value)
    head: list[bytes] = []
    size = 0
    try:
        if not policy.by_reference:
            for chunk in chunks:
                data = chunk.encode("utf-8")
                head.append(data)
                size += len(data)
                if size >= policy.inline_threshold:
                    break
            else:
                return {"result_json": b"".join(head).decode("utf-8")}
        why = (
            "its step names a result store"
            if policy.by_reference
            else f"its JSON reaches the inline threshold of {policy.inline_threshold} bytes"
        )
        target = _file_target(work_dir, policy, why)

        def write(out: _DigestingWriter) -> str:
            _write_json(head, chunks, out)
            return serializers.JSON

        return {"result_file": _write_file(target, write)}
    except (TypeError, ValueError) as exc:
        raise ResultError(
            f"the result is not JSON-serializable: {exc}; return JSON values, a pandas "
            "DataFrame or pyarrow Table (Parquet), or opt in to pickle with "
            '@step(serializer="pickle")'
        ) from None


def _write_json(head: list[bytes], chunks: Any, out: _DigestingWriter) -> None:
    for data in head:
        out.write(data)
    pending: list[str] = []
    size = 0
    for chunk in chunks:
        pending.append(chunk)
        size += len(chunk)
        if size >= _WRITE_BYTES:
            out.write("".join(pending).encode("utf-8"))
            pending, size = [], 0
    out.write("".join(pending).encode("utf-8"))


def _serialize(value: Any, out: _DigestingWriter, name: str) -> str:
    try:
        return serializers.write(value, out, name, allow_pickle=name == serializers.PICKLE)
    except serializers.SerializerError as exc:
        raise ResultError(str(exc)) from None


def _file_target(work_dir: Path | None, policy: ResultPolicy, why: str) -> Path:
    if work_dir is None:
        raise ResultError(
            f"the result must be stored at the site ({why}), but this provider returns "
            f"results inline only, up to the inline threshold ({policy.inline_threshold} "
            "bytes of JSON): return a smaller JSON result, or run the step on a provider "
            "with a work directory (process, slurm, ray with a shared directory)"
        )
    return work_dir / RESULT_FILE


class _DigestingWriter(io.RawIOBase):
    """A binary stream that writes through to a file and digests and counts what passes."""

    def __init__(self, raw: io.BufferedWriter) -> None:
        super().__init__()
        self._raw = raw
        self.digest = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._raw.write(view)
        self.digest.update(view)
        self.size += len(view)
        return len(view)

    def tell(self) -> int:
        return self.size


def _write_file(path: Path, write: Any) -> dict[str, Any]:
    """Run ``write(stream)`` into ``path`` atomically; the ``result_file`` document."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as raw:
            out = _DigestingWriter(raw)
            name: str = write(out)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)
    return ResultFile(path.name, out.size, out.digest.hexdigest(), name).to_value()


def load_input_refs(
    args: list[Any],
    kwargs: dict[str, Any],
    files: Mapping[str, InputFile],
    *,
    allow_pickle: bool,
) -> tuple[list[Any], dict[str, Any]]:
    """``args`` and ``kwargs`` with every reference marker replaced by its loaded value.

    Each reference is loaded once, however often the inputs name it.

    Raises:
        InputRefError: a marker is malformed, names a result with no input file, its file is
            missing or does not match the reference, or it was written by pickle and the step
            did not opt in.
    """
    loaded: dict[str, Any] = {}
    trusted = serializers.SAFE_SERIALIZERS | ({serializers.PICKLE} if allow_pickle else set())

    def load(ref: ResultRef) -> Any:
        if ref.sha256 not in loaded:
            loaded[ref.sha256] = _load_one(ref, files, trusted)
        return loaded[ref.sha256]

    try:
        return replace_ref_markers(args, load), replace_ref_markers(kwargs, load)
    except ValidationError as exc:  # a malformed marker or reference
        raise InputRefError(str(exc)) from None


def _load_one(ref: ResultRef, files: Mapping[str, InputFile], trusted: frozenset[str]) -> Any:
    where = f"the input result {ref.sha256[:12]}... ({ref.store} in {ref.environment})"
    item = files.get(ref.sha256)
    if item is None:
        raise InputRefError(
            f"{where} has no input file: the agent did not materialize it (its reference is "
            "not among the step's listed input references)"
        )
    # A sealed result's input file is the opened plaintext (the agent holds the key): its
    # size is not the reference's, which counts the sealed bytes.
    if (item.size != ref.size and not ref.sealed) or item.serializer != ref.serializer:
        raise InputRefError(f"{where}: its input file does not match the reference")
    if ref.serializer not in trusted:
        raise InputRefError(
            f"{where} was written with {ref.serializer!r}; reading a pickle runs code chosen "
            'by its writer, so only a step that opts in (@step(serializer="pickle")) may take it'
        )
    try:
        actual = os.stat(item.path).st_size
    except OSError as exc:
        raise InputRefError(
            f"{where}: cannot read its input file {item.path}: {exc.strerror or exc} (does "
            "this provider share the agent's file system?)"
        ) from None
    if actual != item.size:
        raise InputRefError(f"{where}: its input file has {actual} bytes, not {item.size}")
    try:
        return serializers.load(item.path, ref.serializer, trusted=trusted)
    except serializers.SerializerError as exc:
        raise InputRefError(f"{where}: {exc}") from None
