"""The process provider's pool of warm step workers (``python -m meridian.stepworker``).

Each worker is a pre-started interpreter that already imported the step executor; it runs one
step at a time and is bound to the code of the first step it runs (its bundle and
``PYTHONPATH``: modules of two bundles may share names), so a step goes to an idle worker of its
code, else to an unbound one, else to a new one while the pool is below its size, else to a
recycled idle worker of other code. When
every worker is busy the provider starts a fresh process instead. A worker retires after
``max_steps`` steps, above ``max_rss_mib`` after a step, or when a step left threads behind;
one that dies (crash, kill on timeout or cancel) fails its current attempt only and is
replaced. The workers are started when the first step arrives (a provider has no start hook).

Each worker leads its own session and process group: killing the group stops the worker and
every process its step started. The agent end of the protocol (framing, sizes) is here; the
worker end is ``meridian/stepworker.py`` and a test pins the two together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meridian.core.framing import MAX_MESSAGE_BYTES, FramingError, encode, read_message
from providers.base import ProviderError
from providers.process.config import PoolConfig
from providers.process.proctree import read_stat, terminate_group

log = logging.getLogger("meridian.providers.process")

WORKER_MODULE = "meridian.stepworker"
_CLOSE_WAIT_S = 2.0
_EXIT_WAIT_S = 5.0


@dataclass(frozen=True)
class Finished:
    """How a job ended: the worker answered (``reported``), or died with ``exit_code``."""

    reported: bool
    exit_code: int | None = None


@dataclass(eq=False)
class WarmWorker:
    ready: asyncio.Future[None]
    proc: asyncio.subprocess.Process | None = None
    start_time: int | None = None
    code: str | None = None  # the code (bundle + PYTHONPATH) of the first step given to it
    steps: int = 0
    job: Job | None = None
    reserved: bool = False
    retiring: bool = False

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the worker has not started"
        return self.proc.pid

    @property
    def free(self) -> bool:
        return self.job is None and not self.reserved and not self.retiring


@dataclass(eq=False)
class Job:
    work_dir: Path
    worker: WarmWorker
    done: asyncio.Future[Finished]
    number: int  # the worker's n-th step (1-based)


@dataclass
class WorkerPool:
    """Warm workers of one provider instance, all in one event loop."""

    python: str
    environment: Callable[[], dict[str, str]]
    config: PoolConfig
    grace_s: float
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)
    _workers: list[WarmWorker] = field(default_factory=list)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _closed: bool = False

    # -- taking a worker -------------------------------------------------------------------

    async def acquire(self, code: str) -> WarmWorker | None:
        """A ready worker bound to ``code``, or None when all workers are busy."""
        self._fill()
        worker = self._pick(code)
        if worker is None:
            return None
        worker.reserved = True
        worker.code = code
        try:
            await asyncio.shield(worker.ready)
        except BaseException:
            worker.reserved = False
            raise
        return worker

    def _live(self) -> list[WarmWorker]:
        return [w for w in self._workers if not w.retiring]

    def _pick(self, code: str) -> WarmWorker | None:
        free = [w for w in self._workers if w.free]
        free.sort(key=lambda w: not w.ready.done())  # ready ones first
        for wanted in (code, None):
            for worker in free:
                if worker.code == wanted:
                    return worker
        if len(self._live()) < self.config.size:
            return self._start()
        if free:  # every slot holds an idle worker of other code: recycle one
            self._retire(free[0])
            return self._start()
        return None

    def _fill(self) -> None:
        while not self._closed and len(self._live()) < self.config.size:
            self._start()

    def _start(self) -> WarmWorker:
        ready: asyncio.Future[None] = self.loop.create_future()
        # A pre-started worker that fails to start is reported by the acquire that picks it.
        ready.add_done_callback(lambda f: f.cancelled() or f.exception())
        worker = WarmWorker(ready=ready)
        self._workers.append(worker)
        task = self.loop.create_task(self._serve(worker))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return worker

    # -- running a step --------------------------------------------------------------------

    async def run(
        self, worker: WarmWorker, work_dir: Path, cwd: Path, env: Mapping[str, str]
    ) -> Job:
        """Hand the step in ``work_dir`` to ``worker`` (acquired); its job ends on ``done``."""
        try:
            body = _encode({"op": "run", "work_dir": str(work_dir), "cwd": str(cwd), "env": env})
        except ProviderError:
            worker.reserved = False
            raise
        job = Job(work_dir, worker, self.loop.create_future(), worker.steps + 1)
        worker.job, worker.reserved = job, False
        assert worker.proc is not None and worker.proc.stdin is not None
        try:
            worker.proc.stdin.write(body)
            await worker.proc.stdin.drain()
        except (ConnectionError, RuntimeError):
            pass  # the worker died: its reader ends the job as a crash
        return job

    async def kill(self, worker: WarmWorker, grace_s: float) -> None:
        """Stop the worker and everything its step started; the pool replaces it."""
        if worker.proc is None:
            return
        worker.retiring = True
        await terminate_group(worker.pid, worker.start_time, worker.pid, grace_s)

    def release(self, worker: WarmWorker, reply: Mapping[str, Any]) -> None:
        """After a step: keep the worker, or retire it (step count, memory, leaked threads)."""
        worker.job = None
        worker.steps += 1
        rss_mib = _number(reply.get("rss_kib")) / 1024
        if (
            reply.get("retire") is True
            or worker.steps >= self.config.max_steps
            or rss_mib > self.config.max_rss_mib
        ):
            self._retire(worker)
        elif not self._closed:
            self._fill()

    def _retire(self, worker: WarmWorker) -> None:
        """Close its input: an idle worker exits at once (a replacement starts when it did)."""
        worker.retiring = True
        if worker.proc is not None and worker.proc.stdin is not None:
            worker.proc.stdin.close()

    # -- one worker's life -----------------------------------------------------------------

    async def _serve(self, worker: WarmWorker) -> None:
        try:
            await self._spawn(worker)
            await self._read_replies(worker)
        except ProviderError as exc:
            if not worker.ready.done():
                worker.ready.set_exception(exc)
        # Cancelled (close()): the worker is left alone to finish its step, so no finally.
        await self._ended(worker)

    async def _spawn(self, worker: WarmWorker) -> None:
        argv = [self.python, "-m", WORKER_MODULE, "--grace", f"{self.grace_s:g}"]
        try:
            worker.proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                cwd="/",
                env=self.environment(),
                start_new_session=True,  # its own group: a kill takes the step's children too
            )
        except OSError as exc:
            raise ProviderError(f"cannot start a warm worker with {argv[0]!r}: {exc}") from exc
        stat = read_stat(worker.proc.pid)
        worker.start_time = stat.start_time if stat else None

    async def _read_replies(self, worker: WarmWorker) -> None:
        assert worker.proc is not None and worker.proc.stdout is not None
        stream = worker.proc.stdout
        while True:
            try:
                message = await _read_message(stream)
            except ProviderError as exc:
                log.error("warm worker %d: %s; stopping it", worker.pid, exc)
                await self.kill(worker, 0.0)
                return
            if message is None:
                return
            if message.get("op") == "ready" and not worker.ready.done():
                worker.ready.set_result(None)
            elif message.get("op") == "done" and worker.job is not None:
                job = worker.job
                if message.get("work_dir") != str(job.work_dir):
                    log.error("warm worker %d answered for another step; stopping it", worker.pid)
                    await self.kill(worker, 0.0)
                    return
                self.release(worker, message)
                job.done.set_result(Finished(reported=True))

    async def _ended(self, worker: WarmWorker) -> None:
        code: int | None = None
        if worker.proc is not None:
            # Its output ended: it is exiting. One that stopped talking but lives on is killed
            # (by group and start time; Process.kill() would reap it behind asyncio's back).
            try:
                code = await asyncio.wait_for(asyncio.shield(worker.proc.wait()), _EXIT_WAIT_S)
            except TimeoutError:
                await terminate_group(worker.pid, worker.start_time, worker.pid, 0.0)
                code = await worker.proc.wait()
        if not worker.ready.done():
            worker.ready.set_exception(
                ProviderError(f"a warm worker exited with code {code} before it was ready")
            )
        if worker.job is not None and not worker.job.done.done():
            worker.job.done.set_result(Finished(reported=False, exit_code=code))
        if worker in self._workers:
            self._workers.remove(worker)
        if worker.ready.exception() is None:
            self._fill()  # replace it (a worker that cannot even start is not retried here)

    async def close(self) -> None:
        """Let every worker go: idle ones exit, busy ones finish their step (its outcome lands
        in the work dir for a restarted agent) and then exit. Nothing is killed."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        idle = [w.proc for w in self._workers if w.proc is not None and w.job is None]
        for worker in self._workers:
            self._retire(worker)
        self._workers.clear()
        # Idle workers exit at once; waiting for that reaps them inside this event loop.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in idle)), _CLOSE_WAIT_S)

    def abandon(self) -> None:
        """Release the workers of a pool whose event loop is gone (its transports are dead):
        closing their input pipes lets them exit as after ``close``."""
        self._closed = True
        for worker in self._workers:
            if worker.proc is not None and worker.proc.stdin is not None:
                pipe = worker.proc.stdin.transport.get_extra_info("pipe")
                with contextlib.suppress(Exception):
                    pipe.close()
        self._workers.clear()


def _encode(message: Mapping[str, Any]) -> bytes:
    try:
        return encode(message)
    except FramingError:
        raise ProviderError(
            f"the step's environment is too large for a warm worker (at most "
            f"{MAX_MESSAGE_BYTES} bytes of JSON)"
        ) from None


async def _read_message(stream: asyncio.StreamReader) -> dict[str, Any] | None:
    try:
        return await read_message(stream)
    except FramingError as exc:
        raise ProviderError(f"the warm worker broke its protocol: {exc}") from None


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0
