"""A real ControlPlane on a private event-loop thread, so tests can use blocking clients and
stubs against it (``ThreadedControlPlane``)."""

from __future__ import annotations

import asyncio
import threading

from control_plane import ControlPlane, ServerConfig
from tests.support.deadlines import DEADLINE_S


class ThreadedControlPlane:
    """A ControlPlane on a private event loop thread, so tests can use blocking stubs."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.plane = ControlPlane(config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> ControlPlane:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.plane.start(), self._loop).result(timeout=DEADLINE_S)
        return self.plane

    async def _shutdown(self) -> None:
        await self.plane.shutdown(1.0)
        # Handlers of streams the server cut off may leave helper tasks behind; end them
        # here so closing the loop does not leave coroutines unfinished.
        current = asyncio.current_task()
        leftovers = [t for t in asyncio.all_tasks() if t is not current]
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=DEADLINE_S)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=DEADLINE_S)
        self._loop.close()
