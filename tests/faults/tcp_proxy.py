"""A TCP proxy on loopback whose network can be cut while tests run.

The proxy runs an asyncio loop in a daemon thread and forwards every accepted connection to
``target``. Its mode can be switched from the test thread at any time:

- ``pass``: bytes flow both ways.
- ``blackhole``: connections stay open but nothing is forwarded in either direction, and new
  connections are accepted and held without reaching the target: both peers see silence.
  Leaving ``blackhole`` resets every held connection, so both sides notice and reconnect.
- ``reset``: every connection is closed at once with an RST (``SO_LINGER`` 0) on both sides,
  and every new connection is reset as soon as it is accepted.

``stop()`` resets everything and closes the listening socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Literal

from tests.support.deadlines import DEADLINE_S

Mode = Literal["pass", "blackhole", "reset"]
MODES: tuple[Mode, ...] = ("pass", "blackhole", "reset")
CHUNK = 64 * 1024


def _rst(writer: asyncio.StreamWriter | None) -> None:
    """Close a connection with an RST instead of a FIN (SO_LINGER on, timeout 0)."""
    if writer is None or writer.transport.is_closing():
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass(eq=False)
class _Link:
    """One client connection and, once forwarding, its upstream connection."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    held: bool = False  # caught by a blackhole: will be reset when it ends
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def reset(self) -> None:
        _rst(self.client)
        _rst(self.upstream)
        self.closed.set()


@dataclass
class ProxyStats:
    accepted: int = 0
    forwarded_connections: int = 0
    resets: int = 0
    bytes_up: int = 0  # client -> target
    bytes_down: int = 0  # target -> client


class TcpProxy:
    """``TcpProxy("127.0.0.1:7444").start()``, then ``address``, ``set_mode(...)``, ``stop()``."""

    def __init__(self, target: str, *, host: str = "127.0.0.1", port: int = 0) -> None:
        target_host, _, target_port = target.rpartition(":")
        self.target = (target_host or "127.0.0.1", int(target_port))
        self._host = host
        self._port = port
        self._mode: Mode = "pass"
        self._links: set[_Link] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self.stats = ProxyStats()

    # ---- control, from any thread ------------------------------------------------------

    @property
    def address(self) -> str:
        return f"{self._host}:{self._port}"

    @property
    def mode(self) -> Mode:
        return self._mode

    def start(self) -> TcpProxy:
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._listen())
            except BaseException as exc:  # reported to start()
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=serve, name=f"tcp-proxy-{self.target}", daemon=True)
        self._thread.start()
        if not ready.wait(10) or failure:
            raise RuntimeError(f"TCP proxy did not start: {failure}")
        return self

    def set_mode(self, mode: Mode) -> None:
        """Switch mode; returns once existing connections have been dealt with."""
        if mode not in MODES:
            raise ValueError(f"unknown proxy mode {mode!r}")
        self._call(self._set_mode, mode)

    def passthrough(self) -> None:
        self.set_mode("pass")

    def blackhole(self) -> None:
        self.set_mode("blackhole")

    def reset(self) -> None:
        self.set_mode("reset")

    @property
    def open_connections(self) -> int:
        return len(self._links)

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return
        with contextlib.suppress(RuntimeError):
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=DEADLINE_S)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=DEADLINE_S)
        self._loop = None

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, fn, *args) -> None:  # type: ignore[no-untyped-def]
        loop = self._loop
        if loop is None:
            raise RuntimeError("the proxy is not running")

        async def run() -> None:
            fn(*args)

        asyncio.run_coroutine_threadsafe(run(), loop).result(timeout=DEADLINE_S)

    # ---- inside the loop -----------------------------------------------------------------

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, self._host, self._port)
        self._port = int(self._server.sockets[0].getsockname()[1])

    def _set_mode(self, mode: Mode) -> None:
        previous, self._mode = self._mode, mode
        if mode == "reset" or (previous == "blackhole" and mode == "pass"):
            for link in [link for link in self._links if mode == "reset" or link.held]:
                self._drop(link)
        elif mode == "blackhole":
            for link in self._links:
                link.held = True

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            self._drop(link)
        # Reset links end their handlers by themselves; cancel only what is left after that
        # (cancelling a handler task makes asyncio log an error for it).
        others = {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}
        if others:
            _, pending = await asyncio.wait(others, timeout=5)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def _drop(self, link: _Link) -> None:
        link.reset()
        self.stats.resets += 1
        self._links.discard(link)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.accepted += 1
        link = _Link(writer)
        if self._mode == "reset":
            _rst(writer)
            self.stats.resets += 1
            return
        self._links.add(link)
        try:
            if self._mode == "blackhole":
                link.held = True
                await link.closed.wait()
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError:
                link.reset()
                return
            link.upstream = up_writer
            if link.closed.is_set():  # reset while we were connecting
                link.reset()
                return
            if link.held:  # a blackhole began while we were connecting
                await link.closed.wait()
                return
            self.stats.forwarded_connections += 1
            await asyncio.gather(
                self._pump(link, reader, up_writer, up=True),
                self._pump(link, up_reader, writer, up=False),
            )
            if not link.closed.is_set():  # both directions ended in order
                writer.close()
                up_writer.close()
        finally:
            self._links.discard(link)

    async def _pump(
        self,
        link: _Link,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        *,
        up: bool,
    ) -> None:
        try:
            while not link.held and not link.closed.is_set():
                data = await source.read(CHUNK)
                if link.held or link.closed.is_set():
                    break  # read during a cut: swallowed, the link will be reset anyway
                if not data:  # orderly close: pass it on
                    if sink.can_write_eof():
                        with contextlib.suppress(OSError):
                            sink.write_eof()
                    return
                if up:  # counted first, so a peer that got the bytes sees them counted
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)
                sink.write(data)
                await sink.drain()
        except (OSError, asyncio.IncompleteReadError):
            link.reset()
            return
        if link.held:
            await link.closed.wait()
