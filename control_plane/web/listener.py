"""The HTTPS listener: uvicorn serving the console inside the control plane's own loop.

uvicorn normally owns the process (signals, its own loop); here it is one more server in a
process that already has both, so its signal capture is switched off and the socket is bound
by us (port 0 works, and the real address is known before the first request).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from control_plane.web.app import build_app
from control_plane.web.guard import Console


class _InLoopServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its host process."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def install_signal_handlers(self) -> None:
        return None


class WebListener:
    def __init__(self, console: Console, listen: str, cert: Path, key: Path) -> None:
        self._console = console
        self._listen = listen
        self._cert, self._key = cert, key
        self._server: _InLoopServer | None = None
        self._task: asyncio.Task[None] | None = None
        self.address = ""

    async def start(self) -> None:
        host, _, port = self._listen.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, int(port)))
        except OSError as exc:
            sock.close()
            raise OSError(f"cannot listen on {self._listen} for the web console: {exc}") from exc
        sock.listen(128)
        sock.setblocking(False)
        bound = sock.getsockname()[1]
        self.address = f"[{host}]:{bound}" if family == socket.AF_INET6 else f"{host}:{bound}"
        config = uvicorn.Config(
            build_app(self._console),
            ssl_certfile=str(self._cert),
            ssl_keyfile=str(self._key),
            lifespan="off",
            access_log=False,
            log_config=None,
            server_header=False,
            proxy_headers=False,
            limit_concurrency=200,
            timeout_keep_alive=5,
            h11_max_incomplete_event_size=16 * 1024,
        )
        self._server = _InLoopServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="web-console")
        while not self._server.started:
            if self._task.done():
                await self._task  # surfaces why it could not start
                raise OSError("the web console stopped while starting")
            await asyncio.sleep(0.01)

    async def shutdown(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._task, timeout=10)
