"""The consumer side: materializing the result references a step takes as inputs.

Before the provider starts a step, the runner hands the references of its assignment
(``Assign.input_refs_json``, checked by the control plane) to ``materialize``, which makes
each one a local file for ``meridian.stepexec`` (``ExecutionSpec.input_files``, keyed by the
reference's sha256):

- **same environment, store configured here**: a filesystem store's object is used where it
  is (no copy; the step only reads it) once its digest is checked; any other store streams
  the object in bounded chunks into ``<work_dir>/inputs/<sha256>``, digest-checked before the
  file is renamed into place;
- **another environment** (or a store of this environment that this agent lacks): the
  fetcher (``agent.transfers``) downloads it through the control plane; without a fetcher
  the attempt fails with an infrastructure error;
- **sealed** results (``ref.sealed``) are opened with this agent's key
  (``meridian.core.sealedfile``) into ``inputs/<sha256>``; the step never sees ciphertext.

Before anything is copied, the inputs' total size is checked against the free space of the
work dir's filesystem (less the agent's ``min_free_bytes``): a step whose inputs do not fit
fails at once, saying how much is needed, instead of filling the disk.

Failures raise ``InputError`` with the error class the attempt fails with:

- ``transient`` (the step's retries apply, as the decision record says): the store is
  unavailable, the transfer failed, or there is no connected producer;
- ``permanent``: the reference is malformed or names a store object that is not there or
  whose bytes do not match it (a retry would read the same bytes), or a sealed input cannot
  be opened with this agent's keys;
- ``infrastructure``: this agent cannot take the inputs at all (no fetcher, no room).

Each message names the reference's environment, store and URI. Nothing here waits without
bound: store reads are bounded by the backends' own timeouts, a transfer by the fetcher's,
and the runner abandons all of it when the attempt is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from agent.health import fault_reason, free_bytes
from agent.results._base import ResultLocation, ResultStore
from agent.results._errors import DigestMismatch, ResultNotFound
from agent.results.registry import local_path, locate
from meridian.core import sealedfile
from meridian.core.errors import MeridianError, SealError, ValidationError
from meridian.core.resultref import ResultRef
from meridian.core.sealing import KeyRing
from providers.base import InputFile

INPUTS_DIR = "inputs"
READ_CHUNK_BYTES = 1024 * 1024
MAX_INPUT_REFS = 1000  # meridian.core.stepfiles.MAX_INPUT_FILES


class Fetcher(Protocol):
    """Downloads a result of another environment through the control plane (a transfer).

    ``agent.transfers.ResultFetcher`` implements it: it writes ``dest`` atomically and checks
    the size and sha256 of the reference before the file appears.
    """

    async def fetch(
        self, attempt_id: str, fencing_token: int, ref: ResultRef, dest: Path
    ) -> None: ...


class InputError(MeridianError):
    """An input reference could not be made a local file; ``error_class`` says how the
    attempt fails (see the module docstring)."""

    def __init__(self, error_class: str, type_name: str, message: str) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.type_name = type_name


@dataclass(frozen=True)
class InputSite:
    """What materializing needs to know about this agent."""

    environment: str
    stores: Mapping[str, ResultStore]
    keys: KeyRing
    fetcher: Fetcher | None
    min_free_bytes: int


@dataclass(frozen=True)
class _Plan:
    ref: ResultRef
    store: ResultStore | None  # None: fetched from another environment
    location: ResultLocation | None
    direct: Path | None  # a filesystem object read where it is

    @property
    def local_bytes(self) -> int:
        """Bytes this input adds to the work dir (a sealed one: its copy and the opened one)."""
        copies = (0 if self.direct is not None else 1) + (1 if self.ref.sealed else 0)
        return copies * self.ref.size


def parse_refs(refs_json: Sequence[str]) -> list[ResultRef]:
    """The assignment's references, strictly parsed, each sha256 once."""
    if len(refs_json) > MAX_INPUT_REFS:
        raise InputError(
            "permanent",
            "meridian.TooManyInputRefs",
            f"the step takes {len(refs_json)} result references; at most {MAX_INPUT_REFS}",
        )
    refs: dict[str, ResultRef] = {}
    for text in refs_json:
        try:
            ref = ResultRef.from_json(text)
        except ValidationError as exc:
            raise InputError("permanent", "meridian.InvalidResultRef", str(exc)) from None
        seen = refs.setdefault(ref.sha256, ref)
        if (seen.size, seen.serializer, seen.sealed) != (ref.size, ref.serializer, ref.sealed):
            raise InputError(
                "permanent",
                "meridian.InvalidResultRef",
                f"two input references share sha256 {ref.sha256} but differ in size, "
                "serializer or sealing",
            )
    return list(refs.values())


async def materialize(
    refs_json: Sequence[str],
    site: InputSite,
    work_dir: Path,
    *,
    attempt_id: str,
    fencing_token: int,
) -> dict[str, InputFile]:
    """Local files for the references, keyed by sha256 (see the module docstring)."""
    refs = parse_refs(refs_json)
    if not refs:
        return {}
    plans = [_plan(ref, site) for ref in refs]
    inputs = work_dir / INPUTS_DIR
    await asyncio.to_thread(_prepare, inputs, plans, site.min_free_bytes)
    files: dict[str, InputFile] = {}
    for plan in plans:
        path = await _one(plan, site, inputs, attempt_id, fencing_token)
        size = plan.ref.size if not plan.ref.sealed else await asyncio.to_thread(_size, path)
        files[plan.ref.sha256] = InputFile(
            str(path.resolve()), plan.ref.serializer, size, plan.ref.sha256
        )
    return files


def _plan(ref: ResultRef, site: InputSite) -> _Plan:
    store = site.stores.get(ref.store) if ref.environment == site.environment else None
    if store is None:
        if site.fetcher is None:
            raise InputError(
                "infrastructure",
                "meridian.NoResultTransfer",
                f"{_where(ref)} is not in a store of this agent, and this agent cannot fetch "
                "results from other sites",
            )
        return _Plan(ref, None, None, None)
    location = locate(store, ref)
    if location is None:
        raise InputError(
            "permanent",
            "meridian.InvalidResultRef",
            f"{_where(ref)}: the URI is not an object of store {store.name!r} here",
        )
    direct = None if ref.sealed else local_path(store, location)
    return _Plan(ref, store, location, direct)


def _prepare(inputs: Path, plans: list[_Plan], min_free_bytes: int) -> None:
    """Create the inputs dir and refuse inputs that would not fit on its filesystem."""
    inputs.mkdir(parents=True, exist_ok=True)
    needed = sum(plan.local_bytes for plan in plans)
    if not needed:
        return
    free = free_bytes(inputs)
    if free - needed < min_free_bytes:
        raise InputError(
            "infrastructure",
            "meridian.InputsTooLarge",
            f"the step's input results need {needed} bytes in {inputs}, but its filesystem "
            f"has {free} bytes free and the agent keeps {min_free_bytes} free: nothing was "
            "downloaded",
        )


async def _one(
    plan: _Plan, site: InputSite, inputs: Path, attempt_id: str, fencing_token: int
) -> Path:
    ref = plan.ref
    opened = inputs / ref.sha256
    sealed_copy = inputs / f"{ref.sha256}.sealed"
    try:
        if plan.store is None:
            assert site.fetcher is not None
            target = sealed_copy if ref.sealed else opened
            await site.fetcher.fetch(attempt_id, fencing_token, ref, target)
        elif plan.direct is not None:
            await asyncio.to_thread(_verify, plan.store, plan.location)
            return plan.direct
        else:
            target = sealed_copy if ref.sealed else opened
            await asyncio.to_thread(_copy, plan.store, plan.location, target)
        if ref.sealed:
            await asyncio.to_thread(_open_sealed, site.keys, ref, sealed_copy, opened)
        return opened
    except InputError:
        raise
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        raise _classified(exc, ref, fetched=plan.store is None) from exc


def _verify(store: ResultStore, location: ResultLocation | None) -> None:
    """Read the object through the store once: it checks the size and sha256."""
    assert location is not None
    with store.open(location, READ_CHUNK_BYTES) as reader:
        for _ in reader:
            pass


def _copy(store: ResultStore, location: ResultLocation | None, dest: Path) -> None:
    """Stream the object into ``dest``, renamed into place only once all of it matched."""
    assert location is not None
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.part")
    try:
        with store.open(location, READ_CHUNK_BYTES) as reader, open(tmp, "xb") as out:
            for chunk in reader:
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _open_sealed(keys: KeyRing, ref: ResultRef, sealed_copy: Path, opened: Path) -> None:
    try:
        info = sealedfile.open_file(keys, sealed_copy, opened)
        if (info.sealed_size, info.sealed_sha256) != (ref.size, ref.sha256):
            opened.unlink()
            raise DigestMismatch(
                f"the sealed file has {info.sealed_size} bytes with sha256 "
                f"{info.sealed_sha256}, not those of its reference"
            )
    finally:
        with contextlib.suppress(FileNotFoundError):
            sealed_copy.unlink()


def _size(path: Path) -> int:
    return path.stat().st_size


def _classified(exc: Exception, ref: ResultRef, *, fetched: bool) -> InputError:
    what = f"{_where(ref)}: {type(exc).__name__}: {exc}"
    if isinstance(exc, SealError):
        return InputError("permanent", "meridian.core.errors.SealError", what)
    if isinstance(exc, ResultNotFound):
        return InputError("permanent", "meridian.ResultNotFound", f"{what} (deleted?)")
    if isinstance(exc, DigestMismatch):
        # Read from a store of this site, or relayed bytes the relay checked: a retry would
        # read the same wrong bytes.
        return InputError("permanent", "meridian.ResultDigestMismatch", what)
    if fault_reason(exc) is not None or (isinstance(exc, OSError) and not fetched):
        # This host's disk or work dir, not the store or the transfer.
        return InputError("infrastructure", "meridian.InputIOError", what)
    return InputError("transient", "meridian.ResultUnavailable", what)


def _where(ref: ResultRef) -> str:
    return f"input result {ref.uri} (store {ref.store!r} of environment {ref.environment!r})"
