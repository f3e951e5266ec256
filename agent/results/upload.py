"""The producer side: putting a step's result file into this site's store, and its reference.

When the step's outcome names a result file (``result.bin``, written by ``meridian.stepexec``
because the result reached the inline threshold, is not JSON, or the step named a store), the
runner calls ``store_result`` off the event loop. It puts the file under
``runs/RUN/STEP/ATTEMPT/result`` in the store the step named or the environment's default, and
returns the ``ResultRef`` the finished report carries instead of the value.

Crash safety: the runner journals the finished report only after the put committed, and the
attempt's handle stays until then, so an agent killed at any point re-attaches after its
restart, finds the outcome and the file again and puts them again. A put is create-only and
digest-checked, so the second put of the same bytes is a no-op and no reader ever sees a torn
object. Where the result goes is decided before the step starts and saved in its work dir
(``ResultTarget``), so the re-attached attempt uses the same store and key.

Sealed steps: the file is sealed (``meridian.core.sealedfile``) into ``result.sealed`` in the
work dir first, and that is what is stored; the reference's size and sha256 are of the sealed
bytes and it says ``sealed``. The sealed file is written atomically and kept until the report
is journaled, so a re-put after a restart sends the very same ciphertext (sealing again would
give other bytes under the same key: a conflict).
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from agent.reports import AttemptFinished
from agent.results._base import ResultStore, attempt_key, file_digest
from agent.results._errors import (
    DigestMismatch,
    ResultConflict,
    ResultStoreError,
    ResultStoreUnavailable,
)
from agent.results.registry import NoResultStore, UnknownResultStore, choose_store
from agent.sealing import AttemptSeal
from meridian.core import sealedfile
from meridian.core.errors import SealError
from meridian.core.resultref import ResultRef
from meridian.core.sealing import KeyRing
from providers.base import ErrorInfo, ResultFile

TARGET_FILE = "result-target.json"
SEALED_FILE = "result.sealed"
_MAX_TARGET_BYTES = 64 * 1024


@dataclass(frozen=True)
class ResultTarget:
    """Where an attempt's result file goes: its store ("" = this agent has none) and key."""

    run_id: str
    step_key: str
    attempt_id: str
    store: str

    @property
    def key(self) -> str:
        return attempt_key(self.run_id, self.step_key, self.attempt_id)

    def save(self, work_dir: Path) -> None:
        """Write it into the attempt's work dir, durably (blocking)."""
        path = work_dir / TARGET_FILE
        tmp = path.with_name(f".{TARGET_FILE}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(asdict(self), f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, work_dir: Path) -> ResultTarget | None:
        """The saved target, or None when the attempt started before one was saved."""
        try:
            with open(work_dir / TARGET_FILE, encoding="utf-8") as f:
                raw = json.loads(f.read(_MAX_TARGET_BYTES))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ResultStoreError(f"the attempt's result target is unreadable: {exc}") from exc
        fields = ("run_id", "step_key", "attempt_id", "store")
        if not isinstance(raw, dict) or not all(isinstance(raw.get(f), str) for f in fields):
            raise ResultStoreError("the attempt's result target is malformed")
        return cls(*(raw[f] for f in fields))


def store_result(
    stores: Mapping[str, ResultStore],
    target: ResultTarget,
    environment: str,
    path: Path,
    result_file: ResultFile,
    *,
    keys: KeyRing,
    seal: AttemptSeal | None,
    sealed_path: Path,
) -> ResultRef:
    """Put the result file at ``path`` into the target store and return its reference
    (blocking: call it off the event loop).

    Raises:
        UnknownResultStore, NoResultStore: the target store is missing here.
        DigestMismatch: the file is not what the step's outcome says (nothing stored).
        ResultStoreUnavailable, ResultConflict, SealError, OSError.
    """
    store = choose_store(stores, target.store, target.store, result_file.size)
    _check_plain_file(path)
    size, sha256 = result_file.size, result_file.sha256
    source = path
    if seal is not None:
        source = sealed_path
        size, sha256 = _sealed(keys, seal, path, result_file, sealed_path)
    location = store.put(target.key, source, size, sha256)
    return ResultRef(
        environment=environment,
        store=store.name,
        uri=location.uri,
        size=location.size,
        sha256=location.sha256,
        serializer=result_file.serializer,
        sealed=seal is not None,
    )


class UnsafeResultFile(Exception):
    """The step's result file is not a plain file of its own (a symlink, a device, ...)."""


def _check_plain_file(path: Path) -> None:
    """Refuse a result "file" that is a symlink or not a regular file: a step (on a host that
    shares the work dir, e.g. Slurm) could point ``result.bin`` at one of the agent's own files
    and have the agent store it for anyone who may read the run. The step has exited by now,
    so nothing swaps the file between this check and the put."""
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISREG(info.st_mode):
        raise UnsafeResultFile(
            f"the step's result file {path.name} is not a regular file (a symlink or special "
            "file): it is not stored"
        )


def _sealed(
    keys: KeyRing, seal: AttemptSeal, path: Path, result_file: ResultFile, sealed_path: Path
) -> tuple[int, str]:
    """(size, sha256) of the sealed copy of the result, sealing it unless a previous run of
    this attempt (before an agent restart) already did."""
    if sealed_path.exists():  # complete: it is renamed into place only after its fsync
        return sealed_path.stat().st_size, file_digest(sealed_path)
    info = sealedfile.seal_file(
        keys, seal.key_group, path, sealed_path, seal.flow_run_id, seal.step_key
    )
    if (info.plaintext_size, info.plaintext_sha256) != (result_file.size, result_file.sha256):
        sealed_path.unlink()
        raise DigestMismatch(
            f"the result file {path} has {info.plaintext_size} bytes with sha256 "
            f"{info.plaintext_sha256}, but the step reported {result_file.size} bytes with "
            f"sha256 {result_file.sha256}; nothing was stored"
        )
    return info.sealed_size, info.sealed_sha256


def store_failure(exc: Exception, store_name: str) -> AttemptFinished:
    """The failed report for a result that could not be stored.

    A store named by the step that this agent lacks, or no store at all, is permanent (the
    environment's configuration will not change by retrying, as for a result too large to
    travel); everything else (the service unavailable, a local digest mismatch or conflict)
    is ``infrastructure``, so the step's retries apply. A sealing error (the key is gone) is
    permanent, as for sealed inputs.
    """
    where = f"store {store_name!r}" if store_name else "the site's result store"
    if isinstance(exc, UnknownResultStore):
        return _failed("permanent", "meridian.UnknownResultStore", str(exc))
    if isinstance(exc, NoResultStore):
        return _failed("permanent", "meridian.NoResultStore", str(exc))
    if isinstance(exc, UnsafeResultFile):
        return _failed("permanent", "meridian.UnsafeResultFile", str(exc))
    if isinstance(exc, SealError):
        return _failed(
            "permanent", "meridian.core.errors.SealError", f"cannot seal the result: {exc}"
        )
    kind = "meridian.ResultStoreError"
    if isinstance(exc, ResultStoreUnavailable):
        kind = "meridian.ResultStoreUnavailable"
    elif isinstance(exc, DigestMismatch):
        kind = "meridian.ResultDigestMismatch"
    elif isinstance(exc, ResultConflict):
        kind = "meridian.ResultConflict"
    message = f"could not store the step's result in {where}: {type(exc).__name__}: {exc}"
    return _failed("infrastructure", kind, message)


def _failed(error_class: str, type_name: str, message: str) -> AttemptFinished:
    return AttemptFinished(
        outcome="failed", error=ErrorInfo(error_class=error_class, type=type_name, message=message)
    )
