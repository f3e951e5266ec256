"""Result transfers between two environments through a real control plane, over loopback
mutual TLS: the producing agent is the real ``Agent`` (environment aws-demo, a filesystem
result store), the consumer is the real ``ResultFetcher`` with the identity of an enrolled
agent of gcp-demo, and the control plane is the real one on its own thread.

The run, its steps and the consumer's attempt are written into the control plane's database
(the way the scheduler would leave them), so the transfer is all that happens. The producer's
store pauses its first read where a test says (``GatedStore``), so a test can act while a
transfer is in flight: push with the wrong agent, or cut the consumer's connection (a TCP
proxy) and watch the fetcher resume from its offset.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import os
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import select

from agent import Agent, AgentConfig, enroll, presigned
from agent.channel import secure_channel
from agent.identity import AgentIdentity, load_identity
from agent.partfile import Progress
from agent.results import (
    FilesystemStore,
    ResultStoresConfig,
    attempt_key,
    build_store,
    parse_result_stores,
)
from agent.results.config import DEFAULT_PRESIGNED_URL_HOSTS, TransferSettings
from agent.results.inputs import InputError
from agent.transfers import ResultFetcher
from control_plane import ServerConfig, create_api_token, create_join_token
from control_plane.orchestration.values import StepSubmission
from control_plane.store.db import Store
from control_plane.store.models import AttemptRow, BundleRow, StepRunRow, TransferRow
from control_plane.store.tx import Tx
from control_plane.usecases.runs import create_run
from control_plane.usecases.steps import submit_steps
from meridian.client import ControlClient
from meridian.core.resultref import ResultRef
from meridian.core.spec import StepSpec
from meridian.core.states import AttemptState
from protos.meridian.v1 import agent_pb2_grpc, common_pb2
from tests.agent.fakecp import FakeProvider
from tests.faults.tcp_proxy import TcpProxy
from tests.support.deadlines import DEADLINE_S
from tests.support.plane import ThreadedControlPlane
from tests.support.polling import apoll_until

pytestmark = pytest.mark.timeout(120)

MiB = 1024 * 1024
DATA = os.urandom(20 * MiB + 4321)


class GatedReader:
    """A store reader that stops before chunk ``after`` until ``gate`` is set."""

    def __init__(self, inner: Any, after: int, gate: threading.Event) -> None:
        self._inner, self._after, self._gate = inner, after, gate
        self.read = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            if self.read == self._after:
                assert self._gate.wait(DEADLINE_S), "the test never opened the gate"
            self.read += 1
            yield chunk

    def close(self) -> None:
        self._inner.close()

    def __enter__(self) -> GatedReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class GatedStore:
    """The real filesystem store; its first ``open`` pauses after ``after`` chunks."""

    def __init__(self, inner: FilesystemStore) -> None:
        self._inner = inner
        self.name = inner.name
        self.after: int | None = None
        self.gate = threading.Event()
        self.readers: list[GatedReader] = []

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._inner, attribute)

    def open(self, location: Any, chunk_size: int = MiB) -> Any:
        reader = self._inner.open(location, chunk_size)
        if self.after is None or self.readers:
            return reader
        gated = GatedReader(reader, self.after, self.gate)
        self.readers.append(gated)
        return gated


@dataclass
class Site:
    address: str  # the agent listener
    client_address: str
    ca_file: Path
    store: Store  # the control plane's database, opened beside it
    producer_store: GatedStore
    consumer: AgentIdentity
    run_id: str
    attempt_id: str
    ref: ResultRef
    admin_token: str


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    config = ServerConfig(
        data_dir=tmp_path / "server",
        listen="127.0.0.1:0",
        agent_listen="127.0.0.1:0",
        heartbeat_interval_s=0.5,
        agent_lost_after_s=600.0,
    )
    server = ThreadedControlPlane(config)
    plane = server.start()
    try:
        for env in ("aws-demo", "gcp-demo"):
            enroll(plane.address, plane.ca_file, create_join_token(config.data_dir, env),
                   tmp_path / env, name=f"{env}-agent")  # fmt: skip
        store = Store(config.database_url)
        scratch = build_store(stores_config(tmp_path).stores["scratch"])
        assert isinstance(scratch, FilesystemStore)
        yield from _with_data(plane, config, store, scratch, tmp_path, monkeypatch)
    finally:
        server.stop()


def _with_data(
    plane: Any,
    config: ServerConfig,
    store: Store,
    scratch: FilesystemStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Site]:
    consumer = load_identity(tmp_path / "gcp-demo")
    location = scratch.put(
        attempt_key("r", "produce#1", "a"), [DATA], len(DATA), hashlib.sha256(DATA).hexdigest()
    )
    ref = ResultRef("aws-demo", "scratch", location.uri, location.size, location.sha256, "pickle")
    run_id, attempt_id = store.run_sync(_recorded, ref, consumer.agent_id)
    gated = GatedStore(scratch)
    # The producing agent's store is the real one, gated by the test.
    monkeypatch.setattr("agent.agent.build_stores", lambda _config: {"scratch": gated})
    try:
        yield Site(
            plane.agent_address,
            plane.address,
            plane.ca_file,
            store,
            gated,
            consumer,
            run_id,
            attempt_id,
            ref,
            create_api_token(config.data_dir, "admin"),
        )
    finally:
        store.close()


def _recorded(session: Any, ref: ResultRef, consumer_id: str) -> tuple[str, str]:
    """A run whose step produce#1 recorded ``ref`` and whose step measure#1 takes it, with
    measure#1's attempt assigned to the consumer (nothing else can be scheduled: no agent
    has ``cloud=nowhere``)."""
    from meridian.core.clock import utcnow

    tx = Tx(session, now=utcnow())
    if session.get(BundleRow, "b" * 64) is None:
        session.add(BundleRow(sha256="b" * 64, size=1, data=b"x", created_at=tx.now))
    run = create_run(tx, flow_name="cross", entrypoint="f.py:cross", parameters_json="{}",
                     bundle_sha256="b" * 64, trigger="manual")  # fmt: skip
    spec = StepSpec(name="s", module="m", function="f", target="cloud=nowhere")
    submit_steps(
        tx,
        run.id,
        [StepSubmission("produce#1", spec, "{}"), StepSubmission("measure#1", spec, "{}")],
    )
    session.flush()
    steps = {
        s.key: s
        for s in session.scalars(select(StepRunRow).where(StepRunRow.flow_run_id == run.id))
    }
    steps["produce#1"].result_ref_json, steps["produce#1"].result_ref_sha256 = (
        ref.to_json(),
        ref.sha256,
    )
    steps["measure#1"].input_refs_json = json.dumps([ref.to_value()])
    steps["measure#1"].last_fencing_token = 1
    attempt = session.scalar(
        select(AttemptRow).where(AttemptRow.step_run_id == steps["measure#1"].id)
    )
    attempt.state, attempt.agent_id, attempt.fencing_token = AttemptState.ASSIGNED, consumer_id, 1
    attempt.environment, attempt.assigned_at = "gcp-demo", tx.now
    return run.id, attempt.id


def stores_config(tmp_path: Path) -> ResultStoresConfig:
    return parse_result_stores({"scratch": {"type": "filesystem", "root": str(tmp_path / "s")}})


async def producing_agent(
    tmp_path: Path, site: Site, stores: ResultStoresConfig | None = None
) -> Agent:
    config = AgentConfig(
        control_plane=site.client_address,
        data_dir=tmp_path / "aws-demo",
        labels={"cloud": "aws"},
        providers=("fake",),
        drain_grace_s=1.0,
        reconnect_max_backoff_s=0.3,
        result_stores=stores or stores_config(tmp_path),
    )
    agent = Agent(config, provider_loader=lambda _type, _cfg: FakeProvider())
    await agent.__aenter__()
    await apoll_until(lambda: agent.connected, message="the producing agent to connect")
    return agent


def channel_of(identity: AgentIdentity, address: str) -> grpc.aio.Channel:
    return secure_channel(
        address, ca_pem=identity.ca_pem, key_pem=identity.key_pem, cert_pem=identity.cert_pem
    )


def transfers(site: Site) -> list[TransferRow]:
    return site.store.run_sync(
        lambda s: list(s.scalars(select(TransferRow).order_by(TransferRow.started_at)))
    )


def run(scenario: Callable[[], Any]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), DEADLINE_S * 2))


def test_a_result_crosses_environments_digest_checked_and_audited(
    tmp_path: Path, site: Site
) -> None:
    dest = tmp_path / "in" / "input.bin"
    dest.parent.mkdir()

    async def scenario() -> None:
        agent = await producing_agent(tmp_path, site)
        channel = channel_of(site.consumer, site.address)
        try:
            fetcher = ResultFetcher(agent_pb2_grpc.AgentServiceStub(channel))
            await fetcher.fetch(site.attempt_id, 1, site.ref, dest)
        finally:
            await channel.close(None)
            await agent.__aexit__(None, None, None)

    run(scenario)
    assert dest.read_bytes() == DATA and not dest.with_name("input.bin.part").exists()
    [row] = transfers(site)
    assert (row.state, row.bytes, row.from_environment, row.to_environment) == (
        "COMPLETED", len(DATA), "aws-demo", "gcp-demo")  # fmt: skip
    with ControlClient(site.client_address, site.ca_file, token=site.admin_token) as client:
        [record] = [
            r for r in client.list_audit_records(limit=1000) if r.action == "result.transferred"
        ]
        listing = client.list_transfers(flow_run_id=site.run_id)
        detail = client.get_run(site.run_id)
    assert record.subject == site.run_id and record.actor == f"agent:{site.consumer.agent_id}"
    assert record.details["bytes"] == len(DATA) and record.details["sha256"] == site.ref.sha256
    assert [(t.from_environment, t.to_environment, t.bytes) for t in listing.totals] == [
        ("aws-demo", "gcp-demo", len(DATA))
    ]
    assert [t.step_key for t in detail.transfers] == ["measure#1"]


def test_references_the_attempt_does_not_take_are_refused(tmp_path: Path, site: Site) -> None:
    forged = ResultRef(
        "aws-demo", "scratch", site.ref.uri.replace("produce", "secret"), 10, "0" * 64, "json"
    )

    async def scenario() -> None:
        channel = channel_of(site.consumer, site.address)
        try:
            fetcher = ResultFetcher(agent_pb2_grpc.AgentServiceStub(channel))
            with pytest.raises(InputError, match="not among the inputs of attempt") as refused:
                await fetcher.fetch(site.attempt_id, 1, forged, tmp_path / "forged")
            assert refused.value.error_class == "permanent"
            with pytest.raises(InputError, match="holds no attempt"):
                await fetcher.fetch("another-attempt", 1, site.ref, tmp_path / "other")
        finally:
            await channel.close(None)

    run(scenario)
    assert transfers(site) == [] and not (tmp_path / "forged").exists()


def test_an_agent_that_was_not_asked_cannot_push_the_transfer(tmp_path: Path, site: Site) -> None:
    site.producer_store.after = 0  # the producer opens the object, then waits
    dest = tmp_path / "input.bin"

    async def scenario() -> None:
        agent = await producing_agent(tmp_path, site)
        channel = channel_of(site.consumer, site.address)
        try:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            fetching = asyncio.ensure_future(
                ResultFetcher(stub).fetch(site.attempt_id, 1, site.ref, dest)
            )
            running = await apoll_until(lambda: transfers(site), message="the transfer to start")

            async def forged() -> AsyncIterator[Any]:
                yield common_pb2.ResultChunk(
                    transfer_id=running[0].id,
                    offset=0,
                    data=b"evil",
                    total_size=site.ref.size,
                    sha256=site.ref.sha256,
                )

            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await stub.PushResult(forged())
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "asked of another agent" in (denied.value.details() or "")
            site.producer_store.gate.set()
            await fetching
        finally:
            site.producer_store.gate.set()
            await channel.close(None)
            await agent.__aexit__(None, None, None)

    run(scenario)
    assert dest.read_bytes() == DATA
    assert [t.state for t in transfers(site)] == ["COMPLETED"]


def test_a_consumer_cut_mid_transfer_resumes_from_its_offset(tmp_path: Path, site: Site) -> None:
    site.producer_store.after = 3  # three chunks arrive, then the producer waits
    dest = tmp_path / "input.bin"
    part = tmp_path / "input.bin.part"

    async def scenario() -> None:
        agent = await producing_agent(tmp_path, site)
        proxy = TcpProxy(site.address).start()
        channel = channel_of(site.consumer, proxy.address)
        try:
            fetcher = ResultFetcher(agent_pb2_grpc.AgentServiceStub(channel), backoff_s=0.1)
            fetching = asyncio.ensure_future(fetcher.fetch(site.attempt_id, 1, site.ref, dest))
            await apoll_until(lambda: part.exists() and part.stat().st_size == 3 * MiB,
                              message="three chunks to arrive")  # fmt: skip
            proxy.reset()  # the consumer's connection is cut mid-transfer
            await apoll_until(
                lambda: transfers(site)[0].state == "FAILED", message="the cut to be seen"
            )
            proxy.passthrough()
            site.producer_store.gate.set()
            await fetching
        finally:
            site.producer_store.gate.set()
            await channel.close(None)
            proxy.stop()
            await agent.__aexit__(None, None, None)

    run(scenario)
    assert dest.read_bytes() == DATA and not part.exists()
    first, *_, last = transfers(site)
    assert first.state == "FAILED" and first.bytes == 3 * MiB
    assert last.state == "COMPLETED" and last.bytes == len(DATA) - 3 * MiB


def test_a_corrupt_stored_object_fails_the_consumer_permanently_as_locally(
    tmp_path: Path, site: Site
) -> None:
    stored = Path(site.ref.uri.removeprefix("file://"))
    stored.chmod(0o600)
    with open(stored, "r+b") as f:  # one flipped byte in the middle: the producer's read sees it
        f.seek(len(DATA) // 2)
        f.write(bytes([DATA[len(DATA) // 2] ^ 0xFF]))

    async def scenario() -> None:
        agent = await producing_agent(tmp_path, site)
        channel = channel_of(site.consumer, site.address)
        try:
            fetcher = ResultFetcher(agent_pb2_grpc.AgentServiceStub(channel), backoff_s=0.1)
            with pytest.raises(InputError) as failed:
                await fetcher.fetch(site.attempt_id, 1, site.ref, tmp_path / "input.bin")
        finally:
            await channel.close(None)
            await agent.__aexit__(None, None, None)
        # As the same-environment read: permanent, so retries do not relay it all again.
        assert failed.value.error_class == "permanent"
        assert failed.value.type_name == "meridian.ResultDigestMismatch"
        assert "DigestMismatch" in str(failed.value) and site.ref.uri in str(failed.value)

    run(scenario)
    assert len(transfers(site)) == 1  # asked once, not once per retry


# ---- presigned URLs (decision 0020, "Presigned URLs") -------------------------------------

SECRET = "sig=very-secret-0123456789"


class ObjectServer:
    """A small HTTP server standing in for the producing site's object store: it serves
    ``DATA`` at any path with a query, honouring ``Range: bytes=N-``, or misbehaves as told by
    ``mode``: ``status`` (answer HTTP ``status``), ``corrupt`` (other bytes of the same size),
    ``bad status line``, ``cut chunked`` (a chunked body cut after one chunk), ``trickle``
    (a byte at a time, slowly) or ``hang`` (the head, then nothing until the client closes,
    which sets ``closed``). ``refuse()`` points ``url`` at an address that refuses
    connections; ``query`` is the URL's query."""

    def __init__(self) -> None:
        import http.server

        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.ranges.append(self.headers.get("Range", ""))
                server.requested.set()
                start = int(self.headers.get("Range", "bytes=0-")[6:].rstrip("-") or 0)
                if server.mode == "status":
                    self.send_error(server.status)
                elif server.mode == "bad status line":
                    self.wfile.write(b"NONSENSE 200\r\n\r\n")
                elif server.mode == "cut chunked":
                    self.head(start, {"Transfer-Encoding": "chunked"})
                    self.wfile.write(b"%x\r\n%s\r\n" % (1000, DATA[start : start + 1000]))
                elif server.mode in ("trickle", "hang"):
                    self.head(start, {"Content-Length": str(len(DATA) - start)})
                    self.wfile.flush()
                    if server.mode == "hang":
                        self.rfile.read(1)  # b"" once the client shut the connection
                        server.closed.set()
                    for byte in DATA[start:]:
                        if server.stopping.wait(0.05):
                            break
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                else:
                    body = bytes(len(DATA)) if server.mode == "corrupt" else DATA
                    self.head(start, {"Content-Length": str(len(DATA) - start)})
                    self.wfile.write(body[start:])

            def head(self, start: int, headers: dict[str, str]) -> None:
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(DATA) - 1}/{len(DATA)}")
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.mode = ""
        self.status = 0
        self.query = SECRET
        self.ranges: list[str] = []
        self.requested = threading.Event()
        self.closed = threading.Event()
        self.stopping = threading.Event()
        self._http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._port = self._http.server_address[1]
        self._refusing: socket.socket | None = None
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}/runs/result?{self.query}"

    def refuse(self) -> None:
        """Point ``url`` at a port bound without listening (kept until ``stop``): connecting
        to it is refused, and no other test can take it meanwhile."""
        self._refusing = socket.socket()
        self._refusing.bind(("127.0.0.1", 0))
        self._port = self._refusing.getsockname()[1]

    def stop(self) -> None:
        self.stopping.set()
        self._http.shutdown()
        self._http.server_close()
        if self._refusing is not None:
            self._refusing.close()


@pytest.fixture
def objects() -> Iterator[ObjectServer]:
    server = ObjectServer()
    try:
        yield server
    finally:
        server.stop()


def presigning(site: Site, url: str | None) -> None:
    """The producer's store presigns ``url`` (None: presigning fails)."""

    def presign(_location: Any, ttl: Any) -> str:
        assert 30 <= ttl.total_seconds() <= 3600
        if url is None:
            raise RuntimeError("no signing credentials")
        return url

    site.producer_store.presign = presign  # type: ignore[attr-defined]


async def presigning_agent(tmp_path: Path, site: Site) -> Agent:
    """The producing agent with ``presign_transfers`` on its store. The store is the test's
    filesystem store dressed as an object store (``presigning``), which the config parser
    rightly refuses: so the validated table is changed here."""
    config = stores_config(tmp_path)
    scratch = dataclasses.replace(config.stores["scratch"], presign_transfers=True)
    return await producing_agent(
        tmp_path, site, dataclasses.replace(config, stores={"scratch": scratch})
    )


def fetch_through(
    tmp_path: Path, site: Site, settings: TransferSettings, dest: Path
) -> Callable[[], Any]:
    async def scenario() -> None:
        agent = await presigning_agent(tmp_path, site)
        channel = channel_of(site.consumer, site.address)
        try:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            await ResultFetcher(stub, settings=settings, backoff_s=0.1).fetch(
                site.attempt_id, 1, site.ref, dest
            )
        finally:
            await channel.close(None)
            await agent.__aexit__(None, None, None)

    return scenario


EMULATOR = TransferSettings(allow_http_presigned_urls=True, presigned_url_hosts=("127.0.0.1",))


def test_a_presigned_url_is_downloaded_from_the_parts_offset_and_checked(
    tmp_path: Path, site: Site, objects: ObjectServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    presigning(site, objects.url)
    dest = tmp_path / "input.bin"
    # An earlier run left 3 MiB: the download asks for the rest only.
    dest.with_name("input.bin.part").write_bytes(DATA[: 3 * MiB])

    run(fetch_through(tmp_path, site, EMULATOR, dest))
    assert dest.read_bytes() == DATA and not dest.with_name("input.bin.part").exists()
    assert objects.ranges == [f"bytes={3 * MiB}-"]
    [row] = transfers(site)  # one transfer, and the relay moved none of its bytes
    assert (row.state, row.method, row.bytes) == ("COMPLETED", "presigned", len(DATA) - 3 * MiB)
    assert SECRET not in caplog.text


def _mode(mode: str) -> Callable[[ObjectServer], None]:
    return lambda o: setattr(o, "mode", mode)


def _status(o: ObjectServer) -> None:
    o.mode, o.status = "status", 403


ANY_HOST = dataclasses.replace(EMULATOR, presigned_url_hosts=(".example.com",))
DEFAULT_HOSTS = TransferSettings(allow_http_presigned_urls=True)


@dataclass(frozen=True)
class Fallback:
    break_it: Callable[[ObjectServer], None]  # how the URL or its server breaks
    why: str  # the reason logged
    settings: TransferSettings = EMULATOR  # the consumer's
    asked: bool = True  # whether the URL's server gets a request at all
    kept: int | None = 0  # bytes of the download that stay in the part (None: some or none)


FALLBACKS = {
    "HTTP 403 (expired)": Fallback(_status, "HTTP 403"),
    "wrong bytes": Fallback(_mode("corrupt"), "other bytes"),
    "http refused": Fallback(
        lambda o: None, "scheme 'http' is refused", TransferSettings(), asked=False
    ),
    "unreachable": Fallback(lambda o: o.refuse(), "could not be reached", asked=False),
    "host not allowed": Fallback(
        lambda o: None, "'127.0.0.1' is not one of", ANY_HOST, asked=False
    ),
    "not a default host": Fallback(
        lambda o: None, "presigned_url_hosts", DEFAULT_HOSTS, asked=False
    ),
    "a bad status line": Fallback(_mode("bad status line"), "BadStatusLine"),
    "a cut chunked body": Fallback(_mode("cut chunked"), "IncompleteRead", kept=1000),
    "a trickle": Fallback(_mode("trickle"), "too little progress", kept=None),
}


@pytest.mark.parametrize("case", sorted(FALLBACKS))
def test_a_presigned_url_that_fails_falls_back_to_the_relay(
    tmp_path: Path,
    site: Site,
    objects: ObjectServer,
    case: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    fallback = FALLBACKS[case]
    if case == "a trickle":
        monkeypatch.setattr("agent.presigned.STALL_S", 0.5)  # given up soon
    fallback.break_it(objects)
    presigning(site, objects.url)
    dest = tmp_path / "input.bin"

    run(fetch_through(tmp_path, site, fallback.settings, dest))
    assert dest.read_bytes() == DATA
    url_transfer, relayed = transfers(site)
    assert (url_transfer.method, url_transfer.state) == ("presigned", "COMPLETED")
    assert (relayed.method, relayed.state) == ("relay", "COMPLETED")
    if fallback.kept is None:  # the bytes the download wrote stay; the relay resumes after
        assert relayed.bytes <= len(DATA)
    else:
        assert relayed.bytes == len(DATA) - fallback.kept
    assert fallback.why in caplog.text and "using the relay" in caplog.text
    assert bool(objects.ranges) == fallback.asked  # a refused URL is never connected to
    assert "very-secret" not in caplog.text


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/x?sig=very-secret abc",
        "http://127.0.0.1:9/x?sig=very-secret\r\nX-Injected: y",
        "http://127.0.0.1:9/x?sig=very-secret\u00e9",
        "http://user:very-secret@127.0.0.1:9/x",
    ],
)
def test_urls_with_odd_characters_or_user_info_fall_back_without_being_quoted(
    tmp_path: Path, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The producer never hands such a URL out (it checks the same way), but a site may be
    compromised: the consumer refuses it before any connection."""
    caplog.set_level(logging.DEBUG)
    progress = Progress(tmp_path / "x.part")
    ok = asyncio.run(
        presigned.download_into(progress, url, REF, hosts=("127.0.0.1",), allow_http=True)
    )
    assert not ok and progress.received == 0
    assert "using the relay" in caplog.text and "very-secret" not in caplog.text
    with pytest.raises(presigned.PresignedDownloadFailed) as caught:
        presigned.download(url, 0, 10, lambda _data: None, hosts=("127.0.0.1",), allow_http=True)
    assert "very-secret" not in str(caught.value)


REF = ResultRef(
    "aws-demo", "scratch", "file:///r/x", len(DATA), hashlib.sha256(DATA).hexdigest(), "pickle"
)


def test_hosts_match_exactly_by_suffix_and_ip_literals_only_exactly() -> None:
    hosts = (".amazonaws.com", "storage.googleapis.com", "10.0.0.7", "::1")
    allowed = presigned.host_allowed
    assert allowed("bucket.s3.eu-west-1.amazonaws.com", hosts)
    assert allowed("s3.amazonaws.com", hosts) and allowed("STORAGE.googleapis.com.", hosts)
    assert not allowed("amazonaws.com", hosts)  # a suffix matches subdomains only
    assert not allowed("evil-amazonaws.com", hosts) and not allowed("amazonaws.com.evil", hosts)
    assert not allowed("x.storage.googleapis.com", hosts)  # an exact entry is exact
    assert allowed("10.0.0.7", hosts) and allowed("0:0::1", hosts)
    assert not allowed("10.0.0.8", hosts) and not allowed("169.254.169.254", hosts)
    assert not allowed("10.0.0.7", (".7", ".0.0.7"))  # suffixes never match an address
    assert not allowed("127.0.0.1", DEFAULT_PRESIGNED_URL_HOSTS)
    for url in (
        "https://s3-foo-123.us-east-1.elb.amazonaws.com/k?X-Amz-Signature=s",  # a load balancer
        "https://ec2-10-0-0-7.compute-1.amazonaws.com/k?X-Amz-Signature=s",  # an instance
    ):
        with pytest.raises(presigned.PresignedDownloadFailed, match="not one of"):
            presigned.check_host(url, DEFAULT_PRESIGNED_URL_HOSTS)
    for url in (
        "https://bucket.s3.eu-west-1.amazonaws.com/k?X-Amz-Signature=s",
        "https://my.bucket.s3-us-west-2.amazonaws.com/k?X-Amz-Signature=s",
        "https://bucket.s3.dualstack.us-east-1.amazonaws.com/k?X-Amz-Signature=s",
        "https://s3.cn-north-1.amazonaws.com.cn/bucket/k?X-Amz-Signature=s",
        "https://bucket.s3.amazonaws.com/k?X-Amz-Signature=s",
        "https://acct.blob.core.windows.net/c/k?sig=s",
        "https://storage.googleapis.com/b/k?X-Goog-Signature=s",
    ):
        presigned.check_url(url, allow_http=False)
        presigned.check_host(url, DEFAULT_PRESIGNED_URL_HOSTS)


def test_a_cancelled_download_closes_its_connection_and_ends_its_thread(
    tmp_path: Path, objects: ObjectServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects.mode = "hang"  # the head, then nothing: the thread blocks in a read
    progress = Progress(tmp_path / "x.part")
    returned = threading.Event()
    real = presigned.download

    def download(*args: Any, **kwargs: Any) -> None:
        try:
            real(*args, **kwargs)
        finally:
            returned.set()

    monkeypatch.setattr(presigned, "download", download)

    async def scenario() -> None:
        task = asyncio.ensure_future(
            presigned.download_into(
                progress, objects.url, REF, hosts=("127.0.0.1",), allow_http=True
            )
        )
        assert await asyncio.to_thread(objects.requested.wait, DEADLINE_S)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(scenario)
    assert returned.wait(DEADLINE_S), "the download's thread never ended"
    assert objects.closed.wait(DEADLINE_S), "the download never closed its connection"
    assert progress.received == 0
