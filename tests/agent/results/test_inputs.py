"""Materializing a step's input references (agent.results.inputs) against real stores: read in
place, streamed, fetched from another environment (a fetcher standing in for the control
plane's relay), opened when sealed; and each failure with its class and a message naming the
reference."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from pathlib import Path

import pytest

from agent.health import free_bytes
from agent.results import FilesystemConfig, FilesystemStore, ResultStore, S3Store
from agent.results.inputs import InputError, InputSite, materialize
from meridian.core import sealedfile
from meridian.core.resultref import ResultRef
from meridian.core.sealing import KeyRing
from providers.base import InputFile
from tests.agent.results.conftest import s3_config

ENV = "onprem"


def put(store: ResultStore, key: str, data: bytes, environment: str = ENV) -> ResultRef:
    digest = hashlib.sha256(data).hexdigest()
    location = store.put(key, [data], len(data), digest)
    return ResultRef(environment, store.name, location.uri, len(data), digest, "json")


class CopyingFetcher:
    """Stands in for agent.transfers.ResultFetcher: copies from the other site's store."""

    def __init__(self, remote: FilesystemStore | None = None, error: Exception | None = None):
        self.remote = remote
        self.error = error
        self.calls: list[tuple[str, int, str]] = []

    async def fetch(self, attempt_id: str, fencing_token: int, ref: ResultRef, dest: Path) -> None:
        self.calls.append((attempt_id, fencing_token, ref.uri))
        if self.error is not None:
            raise self.error
        assert self.remote is not None
        src = Path(ref.uri.removeprefix("file://"))
        await asyncio.to_thread(shutil.copyfile, src, dest)


def site(
    stores: dict[str, ResultStore],
    fetcher: CopyingFetcher | None = None,
    keys: KeyRing | None = None,
    min_free: int = 1,
) -> InputSite:
    return InputSite(ENV, stores, keys or KeyRing(), fetcher, min_free)


def run(refs: list[ResultRef | str], s: InputSite, work: Path) -> dict[str, InputFile]:
    texts = [r if isinstance(r, str) else r.to_json() for r in refs]
    coro = materialize(texts, s, work, attempt_id="a-1", fencing_token=7)
    return dict(asyncio.run(coro))


def refused(refs: list[ResultRef | str], s: InputSite, work: Path) -> InputError:
    with pytest.raises(InputError) as info:
        run(refs, s, work)
    return info.value


@pytest.fixture
def local(tmp_path: Path) -> FilesystemStore:
    return FilesystemStore("scratch", FilesystemConfig(tmp_path / "local"))


@pytest.fixture
def remote(tmp_path: Path) -> FilesystemStore:
    return FilesystemStore("far", FilesystemConfig(tmp_path / "remote"))


def test_a_local_filesystem_object_is_used_in_place(tmp_path: Path, local: FilesystemStore) -> None:
    ref = put(local, "runs/r/s/a/result", b'"hello"')
    files = run([ref, ref], site({"scratch": local}), tmp_path / "work")
    (given,) = files.values()
    assert given.path == str((tmp_path / "local" / "runs/r/s/a/result").resolve())
    assert not list((tmp_path / "work" / "inputs").iterdir())


def test_an_object_store_object_is_streamed_into_the_work_dir(
    tmp_path: Path, s3_endpoint: str
) -> None:
    store = S3Store("s3", s3_config(s3_endpoint, f"t-{os.urandom(4).hex()}/"))
    data = os.urandom(3 * 1024 * 1024 + 5)
    ref = put(store, "runs/r/s/a/result", data)
    files = run([ref], site({"s3": store}), tmp_path / "work")
    copy = tmp_path / "work" / "inputs" / ref.sha256
    assert files[ref.sha256].path == str(copy.resolve())
    assert copy.read_bytes() == data


def test_another_environments_result_is_fetched(
    tmp_path: Path, local: FilesystemStore, remote: FilesystemStore
) -> None:
    ref = put(remote, "runs/r/s/a/result", b"[1, 2, 3]", environment="aws-eu")
    fetcher = CopyingFetcher(remote)
    files = run([ref], site({"scratch": local}, fetcher), tmp_path / "work")
    assert fetcher.calls == [("a-1", 7, ref.uri)]
    copy = tmp_path / "work" / "inputs" / ref.sha256
    assert Path(files[ref.sha256].path).read_bytes() == b"[1, 2, 3]" == copy.read_bytes()
    # The same store name in another environment is another store: fetched too.
    same_name = put(
        FilesystemStore("scratch", FilesystemConfig(tmp_path / "other")), "runs/x", b"1", "gcp"
    )
    run([same_name], site({"scratch": local}, CopyingFetcher(remote)), tmp_path / "w2")


def test_without_a_fetcher_a_foreign_result_fails_as_infrastructure(
    tmp_path: Path, local: FilesystemStore, remote: FilesystemStore
) -> None:
    ref = put(remote, "runs/r/s/a/result", b"1", environment="aws-eu")
    error = refused([ref], site({"scratch": local}), tmp_path / "work")
    assert (error.error_class, error.type_name) == ("infrastructure", "meridian.NoResultTransfer")
    assert ref.uri in str(error) and "'far' of environment 'aws-eu'" in str(error)


def test_a_failed_transfer_is_transient_and_names_the_reference(
    tmp_path: Path, local: FilesystemStore, remote: FilesystemStore
) -> None:
    ref = put(remote, "runs/r/s/a/result", b"1", environment="aws-eu")
    fetcher = CopyingFetcher(error=ConnectionError("no agent of aws-eu is connected"))
    error = refused([ref], site({"scratch": local}, fetcher), tmp_path / "work")
    assert error.error_class == "transient"
    assert ref.uri in str(error) and "no agent of aws-eu is connected" in str(error)


def test_inputs_that_do_not_fit_on_the_disk_fail_before_any_download(
    tmp_path: Path, local: FilesystemStore, remote: FilesystemStore
) -> None:
    ref = put(remote, "runs/r/s/a/result", b"x" * 1000, environment="aws-eu")
    fetcher = CopyingFetcher(remote)
    (tmp_path / "work").mkdir()
    no_room = free_bytes(tmp_path / "work")  # keep all of it free: 1000 bytes are too many
    error = refused([ref], site({"scratch": local}, fetcher, min_free=no_room), tmp_path / "work")
    assert (error.error_class, error.type_name) == ("infrastructure", "meridian.InputsTooLarge")
    assert "need 1000 bytes" in str(error)
    assert fetcher.calls == []
    # Read in place, the same input needs no room.
    local_ref = put(local, "runs/r/s/a/result", b"x" * 1000)
    run([local_ref], site({"scratch": local}, min_free=no_room), tmp_path / "work")


def test_a_corrupt_or_missing_object_fails_permanently(
    tmp_path: Path, local: FilesystemStore
) -> None:
    ref = put(local, "runs/r/s/a/result", b'"hello"')
    path = tmp_path / "local" / "runs/r/s/a/result"
    path.write_bytes(b'"HELLO"')
    error = refused([ref], site({"scratch": local}), tmp_path / "work")
    assert (error.error_class, error.type_name) == ("permanent", "meridian.ResultDigestMismatch")
    assert ref.uri in str(error)
    path.unlink()
    error = refused([ref], site({"scratch": local}), tmp_path / "work")
    assert (error.error_class, error.type_name) == ("permanent", "meridian.ResultNotFound")


def test_a_reference_outside_the_store_or_malformed_is_refused(
    tmp_path: Path, local: FilesystemStore
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("not a result")
    forged = ResultRef(ENV, "scratch", secret.as_uri(), 12, "0" * 64, "json")
    error = refused([forged], site({"scratch": local}), tmp_path / "work")
    assert (error.error_class, error.type_name) == ("permanent", "meridian.InvalidResultRef")
    assert "not an object of store 'scratch'" in str(error)
    error = refused(['{"v": 1}'], site({"scratch": local}), tmp_path / "work")
    assert error.error_class == "permanent" and "missing fields" in str(error)


def test_a_sealed_result_is_opened_and_a_wrong_key_is_permanent(
    tmp_path: Path, local: FilesystemStore
) -> None:
    keys = KeyRing({"eu-sites": os.urandom(64)})
    plain = tmp_path / "plain"
    plain.write_bytes(b'{"rows": 3}')
    info = sealedfile.seal_file(keys, "eu-sites", plain, tmp_path / "sealed", "run-1", "p#1")
    location = local.put(
        "runs/r/s/a/result", tmp_path / "sealed", info.sealed_size, info.sealed_sha256
    )
    ref = ResultRef(
        ENV, "scratch", location.uri, info.sealed_size, info.sealed_sha256, "json", True
    )
    files = run([ref], site({"scratch": local}, keys=keys), tmp_path / "work")
    opened = files[ref.sha256]
    assert Path(opened.path).read_bytes() == b'{"rows": 3}'
    assert opened.size == 11
    assert not (tmp_path / "work" / "inputs" / f"{ref.sha256}.sealed").exists()

    other = KeyRing({"eu-sites": os.urandom(64)})
    error = refused([ref], site({"scratch": local}, keys=other), tmp_path / "w2")
    assert error.error_class == "permanent" and "the keys differ" in str(error)
    assert not (tmp_path / "w2" / "inputs" / ref.sha256).exists()
