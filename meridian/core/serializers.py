"""How a step result becomes a file in a result store, and back.

Four serializers, each recorded by name next to what it wrote (``ResultRef.serializer``):

- ``json`` (the default): strict JSON (no NaN/Infinity), written incrementally to the file;
- ``parquet``: a pandas DataFrame or a pyarrow Table, when pyarrow is installed (extra
  ``results-arrow``); a file written from a DataFrame reads back as a DataFrame, from a Table
  as a Table;
- ``bytes``: ``bytes``, ``bytearray`` or ``memoryview`` (a file's contents, an image, an
  archive), written as they are and read back as ``bytes``;
- ``pickle``: any picklable object, **only** when the writer opts in (``allow_pickle``) and the
  reader trusts it: unpickling runs code chosen by whoever wrote the file, so a reader refuses
  it unless ``trusted`` names it.

Serializers work on files (a path, or a binary stream to write to) so large values need not
exist as one ``bytes`` in memory (JSON is written in pieces; Parquet is written and read by
pyarrow). This module is pure apart from
the file it is given; it imports pyarrow and pandas only when a value needs them.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Iterable
from typing import Any, Final, Protocol

from meridian.core.errors import PermissionDenied, ValidationError

JSON: Final = "json"
PARQUET: Final = "parquet"
PICKLE: Final = "pickle"
BYTES: Final = "bytes"
KNOWN_SERIALIZERS: Final = frozenset({JSON, PARQUET, PICKLE, BYTES})
# What a reader accepts unless it says otherwise: formats whose loading runs no stored code.
SAFE_SERIALIZERS: Final = frozenset({JSON, PARQUET, BYTES})
_COPY_CHUNK = 1024 * 1024

StrPath = str | os.PathLike[str]


class BinarySink(Protocol):
    """Where ``write`` puts bytes: a binary file, or a wrapper of one (it needs ``tell`` too)."""

    def write(self, data: bytes | memoryview, /) -> object: ...

    def tell(self) -> int: ...


class SerializerError(ValidationError):
    """A value cannot be written or read with the chosen serializer; the message says why."""


class UntrustedSerializer(PermissionDenied):
    """The reader does not trust the serializer that wrote the value (e.g. pickle)."""


def is_arrow_table(value: Any) -> bool:
    cls = type(value)
    return cls.__name__ == "Table" and cls.__module__.startswith("pyarrow")


def is_dataframe(value: Any) -> bool:
    cls = type(value)
    return cls.__name__ == "DataFrame" and cls.__module__.startswith("pandas")


def choose(value: Any, requested: str | None = None, *, allow_pickle: bool = False) -> str:
    """The serializer for ``value``: ``requested`` if given and usable, else the default.

    DataFrames and Tables default to ``parquet``, bytes-like values to ``bytes``; everything
    else to ``json``. ``pickle`` is chosen only when asked for with ``allow_pickle``.
    """
    if requested is not None:
        if requested not in KNOWN_SERIALIZERS:
            raise SerializerError(
                f"unknown serializer {requested!r}; use one of {sorted(KNOWN_SERIALIZERS)}"
            )
        if requested == PICKLE and not allow_pickle:
            raise SerializerError(
                "the pickle serializer needs an explicit opt-in (allow_pickle): reading a "
                "pickle runs code"
            )
        if requested == PARQUET and not (is_dataframe(value) or is_arrow_table(value)):
            raise SerializerError(
                f"parquet serializes pandas DataFrames and pyarrow Tables, not "
                f"{type(value).__name__}"
            )
        if requested == BYTES and not is_bytes_like(value):
            raise SerializerError(
                f"bytes serializes bytes, bytearray or memoryview, not {type(value).__name__}"
            )
        return requested
    if is_dataframe(value) or is_arrow_table(value):
        return PARQUET
    if is_bytes_like(value):
        return BYTES
    return JSON


def is_bytes_like(value: Any) -> bool:
    return isinstance(value, bytes | bytearray | memoryview)


def dump(
    value: Any, path: StrPath, serializer: str | None = None, *, allow_pickle: bool = False
) -> str:
    """Write ``value`` to ``path`` (created or truncated); return the serializer's name."""
    name = choose(value, serializer, allow_pickle=allow_pickle)
    with open(path, "wb") as f:
        _write(value, f, name)
    return name


def write(
    value: Any, out: BinarySink, serializer: str | None = None, *, allow_pickle: bool = False
) -> str:
    """Write ``value`` to the binary stream ``out`` (which needs ``write`` and ``tell``, e.g.
    a wrapper that digests what passes); return the serializer's name."""
    name = choose(value, serializer, allow_pickle=allow_pickle)
    _write(value, out, name)
    return name


def _write(value: Any, out: BinarySink, name: str) -> None:
    if name == JSON:
        _dump_json(value, out)
    elif name == PARQUET:
        _dump_parquet(value, out)
    elif name == BYTES:
        view = memoryview(value).cast("B")
        # In pieces: a digesting wrapper then never copies the whole value at once.
        for start in range(0, len(view), _COPY_CHUNK):
            out.write(view[start : start + _COPY_CHUNK])
    else:
        try:
            pickle.dump(value, out, protocol=5)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise SerializerError(f"cannot pickle {type(value).__name__}: {exc}") from None


def load(path: StrPath, serializer: str, *, trusted: Iterable[str] = SAFE_SERIALIZERS) -> Any:
    """Read a value that ``serializer`` wrote to ``path``.

    Raises:
        UntrustedSerializer: ``serializer`` is not in ``trusted`` (pickle is not by default).
        SerializerError: unknown serializer, missing optional dependency, or a corrupt file.
    """
    if serializer not in KNOWN_SERIALIZERS:
        raise SerializerError(f"unknown serializer {serializer!r} recorded on the result")
    if serializer not in frozenset(trusted):
        raise UntrustedSerializer(
            f"refusing to read a result written by {serializer!r}: this reader does not trust "
            "it (loading a pickle runs code chosen by its writer; trust it explicitly only for "
            "results your own steps wrote)"
        )
    if serializer == JSON:
        return _load_json(path)
    if serializer == PARQUET:
        return _load_parquet(path)
    if serializer == BYTES:
        with open(path, "rb") as f:
            return f.read()
    with open(path, "rb") as f:
        try:
            return pickle.load(f)
        except Exception as exc:  # unpickling can raise anything the stored code raises
            raise SerializerError(f"cannot unpickle the result: {exc}") from None


# JSON text is handed to the stream in pieces of about this size, not token by token.
_JSON_WRITE_BYTES = 64 * 1024


def _dump_json(value: Any, out: BinarySink) -> None:
    # iterencode writes piece by piece, so no whole-document string is built in memory.
    encoder = json.JSONEncoder(allow_nan=False, separators=(",", ":"), ensure_ascii=False)
    pending: list[str] = []
    size = 0
    try:
        for chunk in encoder.iterencode(value):
            pending.append(chunk)
            size += len(chunk)
            if size >= _JSON_WRITE_BYTES:
                out.write("".join(pending).encode("utf-8"))
                pending, size = [], 0
    except (TypeError, ValueError) as exc:
        raise SerializerError(
            f"the result is not JSON-serializable: {exc}; return JSON values, or a "
            "DataFrame/Table for parquet, or opt in to pickle"
        ) from None
    out.write("".join(pending).encode("utf-8"))


def _load_json(path: StrPath) -> Any:
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f, parse_constant=_refuse_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            raise SerializerError(f"the stored result is not valid JSON: {exc}") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise SerializerError(
            "the parquet serializer needs pyarrow: pip install 'meridian-orchestrator"
            "[results-arrow]'"
        ) from None
    return pyarrow, pyarrow.parquet


def _dump_parquet(value: Any, out: BinarySink) -> None:
    pa, pq = _pyarrow()
    table = pa.Table.from_pandas(value) if is_dataframe(value) else value
    try:
        pq.write_table(table, out)
    except (pa.ArrowException, TypeError, ValueError) as exc:
        raise SerializerError(f"cannot write the table as parquet: {exc}") from None


def _load_parquet(path: StrPath) -> Any:
    pa, pq = _pyarrow()
    try:
        table = pq.read_table(os.fspath(path))
    except (pa.ArrowException, OSError) as exc:
        raise SerializerError(f"the stored result is not valid parquet: {exc}") from None
    metadata = table.schema.metadata or {}
    # pyarrow records pandas' index and dtypes under this key when the table came from pandas.
    if b"pandas" in metadata:
        try:
            import pandas  # noqa: F401  (to_pandas needs it)
        except ImportError:
            raise SerializerError(
                "this result was written from a pandas DataFrame; install pandas to read it"
            ) from None
        return table.to_pandas()
    return table
