"""The test TCP proxy: forwards, blackholes, resets, and recovers."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator

import pytest

from tests.faults.tcp_proxy import TcpProxy
from tests.support.deadlines import DEADLINE_S


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: EchoServer = self.server  # type: ignore[assignment]
        while True:
            try:
                data = self.request.recv(4096)
            except OSError:
                return
            if not data:
                return
            with server.lock:
                server.received += len(data)
            self.request.sendall(data)


class EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Echo)
        self.lock = threading.Lock()
        self.received = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[TcpProxy]:
    with TcpProxy(echo.address) as p:
        yield p


def dial(proxy: TcpProxy) -> socket.socket:
    host, _, port = proxy.address.rpartition(":")
    return socket.create_connection((host, int(port)), timeout=DEADLINE_S)


def roundtrip(sock: socket.socket, payload: bytes = b"ping") -> bytes:
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(4096)
        if not chunk:
            break
        got += chunk
    return got


def is_silent(sock: socket.socket, wait_s: float = 0.5) -> bool:
    """True when nothing (no data, no FIN, no RST) arrives for ``wait_s``."""
    sock.settimeout(wait_s)
    try:
        sock.recv(4096)
    except TimeoutError:
        return True
    finally:
        sock.settimeout(DEADLINE_S)
    return False


def is_reset(sock: socket.socket) -> bool:
    """True when the peer reset the connection (an RST, not an orderly FIN)."""
    sock.settimeout(DEADLINE_S)
    try:
        sock.recv(4096)
    except ConnectionResetError:
        return True
    return False


def test_pass_forwards_both_ways(proxy: TcpProxy, echo: EchoServer) -> None:
    with dial(proxy) as sock:
        assert roundtrip(sock, b"hello") == b"hello"
    assert proxy.stats.bytes_up == 5 and proxy.stats.bytes_down == 5


def test_blackhole_holds_connections_silently_then_resets_them(
    proxy: TcpProxy, echo: EchoServer
) -> None:
    old = dial(proxy)
    assert roundtrip(old) == b"ping"
    proxy.blackhole()
    new = dial(proxy)  # accepted, but never reaches the target
    before = echo.received
    old.sendall(b"lost")
    new.sendall(b"lost")
    assert is_silent(old) and is_silent(new)
    assert echo.received == before  # nothing reached the target either

    proxy.passthrough()  # the cut ends: both held connections are reset
    assert is_reset(old) and is_reset(new)
    with dial(proxy) as again:
        assert roundtrip(again) == b"ping"
    old.close()
    new.close()


def test_reset_closes_existing_and_new_connections(proxy: TcpProxy) -> None:
    old = dial(proxy)
    assert roundtrip(old) == b"ping"
    proxy.reset()
    assert is_reset(old)
    try:
        new = dial(proxy)
    except ConnectionError:
        pass  # refused outright is a reset too
    else:
        assert is_reset(new)
        new.close()
    proxy.passthrough()
    with dial(proxy) as again:
        assert roundtrip(again) == b"ping"
    old.close()


def test_stop_closes_everything(echo: EchoServer) -> None:
    proxy = TcpProxy(echo.address).start()
    sock = dial(proxy)
    assert roundtrip(sock) == b"ping"
    proxy.stop()
    assert is_reset(sock)
    sock.close()
    with pytest.raises(ConnectionRefusedError):
        dial(proxy).close()
    proxy.stop()  # idempotent


def test_unknown_mode_is_refused(proxy: TcpProxy) -> None:
    with pytest.raises(ValueError):
        proxy.set_mode("drop")  # type: ignore[arg-type]
