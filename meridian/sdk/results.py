"""``meridian.ResultRef``: a step result that stayed at its site, as a flow body sees it.

A step whose result reached its inline threshold (or that names ``result_store=``) completes
with a reference instead of a value (docs/results.md). In the flow body the step's future
resolves to a :class:`ResultRef`:

- pass it to another step (anywhere in its arguments): the step receives the loaded value,
  read by its agent from the store, or relayed from the producing site;
- ``ref.load()`` downloads it here through the control plane (digest checked) and
  deserializes it; ``ref.save(path)`` downloads it to a file without deserializing.

Reading a pickle runs code chosen by whoever wrote it: ``load`` refuses one unless
``trust_pickle=True``. The result of a sealed step is stored sealed; ``load`` and ``save``
open it with the flow runner's keys (``MERIDIAN_SEAL_KEYS``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from meridian.core import resultref, serializers
from meridian.core.errors import ValidationError
from meridian.core.sealing import KeyRing

StrPath = str | os.PathLike[str]


class ResultFetcher(Protocol):
    """The part of ``ControlClient`` that downloads a stored result."""

    def fetch_result(
        self,
        flow_run_id: str,
        step_key: str,
        dest: StrPath,
        *,
        expected: resultref.ResultRef | None = None,
    ) -> Any: ...


@dataclass(frozen=True)
class ResultSource:
    """Where a flow runner's references are downloaded from, and its sealing keys."""

    fetcher: ResultFetcher
    keys: Callable[[], KeyRing] | None = None


@dataclass(frozen=True)
class ResultRef(resultref.ResultRef):
    """A stored step result: where it is (environment, store, URI), its size, sha256 and
    serializer, whether its bytes are sealed, and which step of which run produced it.

    Equal references name the same object; passing one to a step passes the reference, not
    the bytes.
    """

    flow_run_id: str = ""
    step_key: str = ""
    source: ResultSource | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(
        cls,
        ref: resultref.ResultRef,
        flow_run_id: str,
        step_key: str,
        source: ResultSource | None = None,
    ) -> ResultRef:
        """The flow body's view of ``ref``, produced by ``step_key`` of ``flow_run_id``."""
        return cls(
            environment=ref.environment,
            store=ref.store,
            uri=ref.uri,
            size=ref.size,
            sha256=ref.sha256,
            serializer=ref.serializer,
            sealed=ref.sealed,
            flow_run_id=flow_run_id,
            step_key=step_key,
            source=source,
        )

    def load(self, *, trust_pickle: bool = False) -> Any:
        """Download the result through the control plane and deserialize it.

        Args:
            trust_pickle: read a result written with pickle. Loading a pickle runs code
                chosen by whoever wrote it: trust only results of your own steps.

        Raises:
            UntrustedSerializer: a pickle, without ``trust_pickle``.
            NotFound / PermissionDenied / ConflictError: the control plane could not serve
                it (e.g. a residency rule forbids downloads of the producing environment).
            SealError: a sealed result without its key group in ``MERIDIAN_SEAL_KEYS``.
        """
        trusted = serializers.SAFE_SERIALIZERS | ({serializers.PICKLE} if trust_pickle else set())
        if self.serializer not in trusted:
            # Refuse before downloading anything.
            raise serializers.UntrustedSerializer(
                f"the result of step {self.step_key!r} was written with {self.serializer!r}; "
                "loading it runs code chosen by its writer: pass trust_pickle=True only for "
                "results your own steps wrote"
            )
        with tempfile.TemporaryDirectory(prefix="meridian-result-") as directory:
            path = self.save(Path(directory) / "result")
            return serializers.load(path, self.serializer, trusted=trusted)

    def save(self, path: StrPath) -> Path:
        """Download the result's bytes to ``path`` (written atomically; a sealed result is
        opened first) without deserializing them; returns the path."""
        source = self._source()
        target = Path(path)
        if not self.sealed:
            source.fetcher.fetch_result(self.flow_run_id, self.step_key, target, expected=self)
            return target
        from meridian.core.sealedfile import open_file

        if source.keys is None:
            raise ValidationError(
                f"the result of step {self.step_key!r} is sealed and this reference has no "
                "keys to open it"
            )
        keys = source.keys()
        sealed = target.with_name(f".{target.name}.sealed")
        try:
            source.fetcher.fetch_result(self.flow_run_id, self.step_key, sealed, expected=self)
            # The header names the run and step that produced the bytes, which is another run
            # for a result reused from the cache; the bytes were checked against this
            # reference's digest on arrival, so any producer the key group sealed is accepted.
            open_file(keys, sealed, target, None, None)
        finally:
            sealed.unlink(missing_ok=True)
        return target

    def _source(self) -> ResultSource:
        if self.source is None or not self.flow_run_id or not self.step_key:
            raise ValidationError(
                "this ResultRef cannot be downloaded here: it does not come from a step of a "
                "running flow (pass it to a step instead, or use `meridian results get`)"
            )
        return self.source


def with_markers(value: Any, _depth: int = 0) -> Any:
    """``value`` with each reference in it (at any depth of lists, tuples and dicts) replaced
    by its ``{"$meridian_ref": ...}`` marker; what has none is returned as it is."""
    if isinstance(value, resultref.ResultRef):
        return resultref.ref_marker(value)
    if _depth >= _MAX_DEPTH:
        return value  # the JSON check reports the depth
    if isinstance(value, dict):
        items = {k: with_markers(v, _depth + 1) for k, v in value.items()}
        return items if any(items[k] is not v for k, v in value.items()) else value
    if isinstance(value, list | tuple):
        replaced = [with_markers(v, _depth + 1) for v in value]
        changed = any(r is not v for r, v in zip(replaced, value, strict=True))
        return replaced if changed else value
    return value


_MAX_DEPTH = 200
