"""The result and input-file parts of a step's ``spec.json`` and ``outcome.json``.

A provider writes ``spec.json`` for ``meridian.stepexec``; the agent decides two of its keys:

- ``"result"`` (:class:`ResultPolicy`): how the executor hands back the step's return value:
  inline JSON under ``inline_threshold`` bytes, else (or always with ``by_reference``) a file
  ``result.bin`` in the work dir written by ``serializer`` ("" = automatic);
- ``"input_files"`` (sha256 -> :class:`InputFile`): the local files holding the results that
  the step's inputs reference (``{"$meridian_ref": ...}`` markers), materialized by the agent.

The executor answers in ``outcome.json`` with ``"result_file"`` (:class:`ResultFile`) instead
of ``"result_json"`` when the result went to a file. Every value here is parsed strictly: the
documents cross a process boundary, and a wrong path or size must stop, not be guessed at.
Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from meridian.core.resultref import (
    INLINE_THRESHOLD_BYTES,
    MAX_INLINE_THRESHOLD_BYTES,
    MAX_RESULT_BYTES,
)
from meridian.core.serializers import KNOWN_SERIALIZERS, PICKLE

RESULT_FILE: Final = "result.bin"
RESULT_KEY: Final = "result"
INPUT_FILES_KEY: Final = "input_files"
# A step takes at most this many referenced inputs (the agent materializes each one).
MAX_INPUT_FILES = 1000
MAX_PATH_LENGTH = 4096
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# A result file is a plain name inside the work dir: no separators, no "..", no hidden name.
_FILE_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


class StepFileError(ValueError):
    """A ``result``, ``input_files`` or ``result_file`` document is malformed; says why."""


@dataclass(frozen=True)
class ResultPolicy:
    """How the step executor hands back a result (``spec.json`` key ``"result"``).

    Attributes:
        inline_threshold: serialized results of at least this many bytes go to a file.
        by_reference: always write a file (the step named a result store).
        serializer: "" (automatic), "json", "parquet", "bytes" or "pickle".
        allow_pickle: the step opted in to pickle (writing its result, reading its inputs).
    """

    inline_threshold: int = INLINE_THRESHOLD_BYTES
    by_reference: bool = False
    serializer: str = ""
    allow_pickle: bool = False

    def __post_init__(self) -> None:
        threshold = self.inline_threshold
        if type(threshold) is not int or not 0 <= threshold <= MAX_INLINE_THRESHOLD_BYTES:
            raise StepFileError(
                f"result.inline_threshold {threshold!r} must be an integer from 0 to "
                f"{MAX_INLINE_THRESHOLD_BYTES}"
            )
        if type(self.by_reference) is not bool or type(self.allow_pickle) is not bool:
            raise StepFileError("result.by_reference and result.allow_pickle must be booleans")
        if self.serializer != "" and self.serializer not in KNOWN_SERIALIZERS:
            raise StepFileError(
                f"result.serializer {self.serializer!r} must be '' or one of "
                f"{sorted(KNOWN_SERIALIZERS)}"
            )
        if self.serializer == PICKLE and not self.allow_pickle:
            raise StepFileError("result.serializer 'pickle' needs result.allow_pickle")

    @classmethod
    def for_step(
        cls, *, result_store: str, inline_threshold_bytes: int, serializer: str
    ) -> ResultPolicy:
        """The policy of a step from its ``StepSpec`` fields (0 = the default threshold)."""
        return cls(
            inline_threshold=inline_threshold_bytes or INLINE_THRESHOLD_BYTES,
            by_reference=bool(result_store),
            serializer=serializer,
            allow_pickle=serializer == PICKLE,
        )

    def to_value(self) -> dict[str, Any]:
        return {
            "inline_threshold": self.inline_threshold,
            "by_reference": self.by_reference,
            "serializer": self.serializer,
            "allow_pickle": self.allow_pickle,
        }

    @classmethod
    def from_value(cls, raw: Any) -> ResultPolicy:
        fields = {"inline_threshold", "by_reference", "serializer", "allow_pickle"}
        if not isinstance(raw, dict) or set(raw) != fields:
            raise StepFileError(f"'result' must be an object with the keys {sorted(fields)}")
        if not isinstance(raw["serializer"], str):
            raise StepFileError("result.serializer must be a string")
        return cls(**raw)


@dataclass(frozen=True)
class InputFile:
    """A local file holding a result that the step's inputs reference (by its sha256)."""

    path: str
    serializer: str
    size: int
    sha256: str

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path.startswith("/"):
            raise StepFileError(f"input file path {self.path!r} must be an absolute path")
        if len(self.path) > MAX_PATH_LENGTH or "\0" in self.path:
            raise StepFileError("input file path is too long or contains NUL")
        if self.serializer not in KNOWN_SERIALIZERS:
            raise StepFileError(f"input file serializer {self.serializer!r} is not known")
        _check_size_and_digest(self.size, self.sha256, "input file")

    def to_value(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "serializer": self.serializer,
            "size": self.size,
            "sha256": self.sha256,
        }

    @classmethod
    def from_value(cls, raw: Any) -> InputFile:
        fields = {"path", "serializer", "size", "sha256"}
        if not isinstance(raw, dict) or set(raw) != fields:
            raise StepFileError(f"an input file must be an object with the keys {sorted(fields)}")
        return cls(**raw)


def input_files_to_value(files: Mapping[str, InputFile]) -> dict[str, Any]:
    return {sha256: f.to_value() for sha256, f in files.items()}


def input_files_from_value(raw: Any) -> dict[str, InputFile]:
    """``spec.json``'s ``"input_files"``: sha256 -> file, each keyed by its own digest."""
    if not isinstance(raw, dict) or len(raw) > MAX_INPUT_FILES:
        raise StepFileError(f"'input_files' must be an object of at most {MAX_INPUT_FILES} entries")
    files: dict[str, InputFile] = {}
    for sha256, value in raw.items():
        item = InputFile.from_value(value)
        if item.sha256 != sha256:
            raise StepFileError(f"input file under {sha256[:16]!r}... names another sha256")
        files[sha256] = item
    return files


@dataclass(frozen=True)
class ResultFile:
    """The result the executor wrote to a file (``outcome.json`` key ``"result_file"``).

    ``path`` is a plain file name relative to the directory the outcome was read from.
    """

    path: str
    size: int
    sha256: str
    serializer: str

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not _FILE_NAME_RE.match(self.path):
            raise StepFileError(
                f"result_file.path {self.path!r} must be a plain file name inside the work dir"
            )
        if self.serializer not in KNOWN_SERIALIZERS:
            raise StepFileError(f"result_file.serializer {self.serializer!r} is not known")
        _check_size_and_digest(self.size, self.sha256, "result_file")

    def to_value(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "size": self.size,
            "sha256": self.sha256,
            "serializer": self.serializer,
        }

    @classmethod
    def from_value(cls, raw: Any) -> ResultFile:
        fields = {"path", "size", "sha256", "serializer"}
        if not isinstance(raw, dict) or set(raw) != fields:
            raise StepFileError(f"'result_file' must be an object with the keys {sorted(fields)}")
        return cls(**raw)


def _check_size_and_digest(size: object, sha256: object, what: str) -> None:
    # bool is an int in Python: refuse it where a size is meant.
    if type(size) is not int or not 0 <= size <= MAX_RESULT_BYTES:
        raise StepFileError(f"{what} size {size!r} must be an integer from 0 to {MAX_RESULT_BYTES}")
    if not isinstance(sha256, str) or not _SHA256_RE.match(sha256):
        raise StepFileError(f"{what} sha256 must be 64 lowercase hexadecimal characters")


def spec_fields(
    policy: ResultPolicy | None, input_files: Mapping[str, InputFile]
) -> dict[str, Any]:
    """The ``spec.json`` keys ``"result"`` and ``"input_files"`` (each only when set)."""
    fields: dict[str, Any] = {}
    if policy is not None:
        fields[RESULT_KEY] = policy.to_value()
    if input_files:
        fields[INPUT_FILES_KEY] = input_files_to_value(input_files)
    return fields
