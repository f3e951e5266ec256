"""The agent's end of the hosted runners' fork server (``python -m meridian.flowzygote``,
decision 0018 "Fork server"): start it in the background, restart it with backoff when it dies,
hand it runs, and route its replies.

The server is an optimisation, never a dependency: ``fork`` answers None whenever it cannot
say "this pid runs the run" (not up yet, restarting, refused, too large, no answer in time),
and the caller starts a fresh process as before. A forked runner's end arrives as the server's
``exited`` message; when the server dies first, the runner's exit future resolves to None and
the caller watches the runner by pid and start time, as it watches a re-attached one.

The framing is ``meridian.stepworker``'s (4-byte big-endian length + JSON, bounded), written
here for asyncio as the process provider's pool does; a test pins the two ends together. A
request carries the run's token after a NUL byte, outside the JSON (the server never decodes
it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from meridian.core import framing

log = logging.getLogger("meridian.agent.forkserver")

HEADER = framing.HEADER
MAX_MESSAGE_BYTES = framing.MAX_MESSAGE_BYTES
MODULE = "meridian.flowzygote"
# A fork is answered in milliseconds; a server silent this long after a request was written
# to it (not counting the wait for earlier requests to be written) is broken and is replaced.
REPLY_TIMEOUT_S = 10.0
# How long ``close`` lets the server exit on its own (it answers what it has read first).
CLOSE_TIMEOUT_S = 10.0
# Restart backoff: doubles from MIN to MAX, back to MIN after a server lived STABLE_S.
BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 60.0
STABLE_S = 60.0


@dataclass(frozen=True)
class Forked:
    """A runner the server started: its pid, and its exit code (None: the server ended
    before it did, so nobody can tell)."""

    pid: int
    exit_code: asyncio.Future[int | None]


class ForkServerError(Exception):
    """The server broke the protocol."""


class ForkUncertain(Exception):
    """The server got a request and then died or fell silent: a child may or may not run that
    runner. Starting another runner of the same epoch would risk two; the caller reports the
    runner as not started instead, and the run's next epoch fences a child that did start."""


# What a pending request's answer is when the server ended before it answered.
_GONE = "gone"


class ForkServerClient:
    """One fork server per agent, kept running while the agent has runner slots."""

    def __init__(self, command: Sequence[str], env: Mapping[str, str], cwd: str = "/") -> None:
        self._command = tuple(command)
        self._env = dict(env)
        self._cwd = cwd
        self._proc: asyncio.subprocess.Process | None = None
        self._up = False
        self._pending: dict[tuple[str, int], asyncio.Future[Forked | str | None]] = {}
        self._exits: dict[int, asyncio.Future[int | None]] = {}
        self._write_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    @property
    def up(self) -> bool:
        return self._up

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._up else None

    def start(self) -> None:
        """Start the server in the background; the caller never waits for it."""
        if self._task is None:
            self._task = asyncio.ensure_future(self._supervise())

    async def close(self) -> None:
        """Stop the server (its input ends, so it exits; killed if it has not within
        ``CLOSE_TIMEOUT_S``); its runners go on."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        proc = self._proc
        if proc is not None and proc.returncode is None:
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await proc.wait()
            except TimeoutError:
                log.warning(
                    "the fork server (pid %d) did not exit within %g s; killing it",
                    proc.pid,
                    CLOSE_TIMEOUT_S,
                )
                _kill(proc)
                await proc.wait()

    async def fork(
        self,
        run_id: str,
        epoch: int,
        env: Mapping[str, str],
        work_dir: str,
        log_path: str,
        token: str,
    ) -> Forked | None:
        """Start a runner in the server; None when it certainly did not (the caller starts a
        fresh process). Raises ForkUncertain when nobody can tell.

        A caller that must know of every runner started shields this call from cancellation
        (``FlowRunners`` does): a ``started`` answer that finds its request gone (cancelled,
        or given up on) has its runner killed, as nobody tracks it."""
        proc = self._proc
        if not self._up or proc is None or proc.stdin is None:
            return None
        key = (run_id, epoch)
        if key in self._pending or not _printable_ascii(token):
            return None
        request = {
            "op": "run",
            "run_id": run_id,
            "epoch": epoch,
            "env": dict(env),
            "work_dir": work_dir,
            "log_path": log_path,
        }
        body = json.dumps(request).encode("utf-8") + b"\0" + token.encode("ascii")
        if len(body) > MAX_MESSAGE_BYTES:
            log.warning("a runner request of %d bytes is too large for the fork server", len(body))
            return None
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Forked | str | None] = loop.create_future()
        self._pending[key] = answer
        sent = False  # the server may hold the whole request
        stdin = proc.stdin
        try:
            # Waiting for earlier requests to be written is not the server's silence: the
            # deadline starts once this request is written. Each writer's wait is bounded (its
            # own deadline), and a writer that hits it takes the server down for all.
            async with self._write_lock:
                if self._proc is not proc or not self._up or stdin.is_closing():
                    return None  # replaced or gone while this request waited: nothing sent
                stdin.write(HEADER.pack(len(body)) + body)
                deadline = loop.time() + REPLY_TIMEOUT_S
                # Nothing left in our buffer: the whole request is in the pipe.
                sent = stdin.transport.get_write_buffer_size() == 0
                async with asyncio.timeout_at(deadline):
                    await stdin.drain()
                sent = True
            async with asyncio.timeout_at(deadline):
                result = await answer
        except TimeoutError:
            # Our buffer empty: the whole request reached the pipe (drain may not have returned
            # yet) and the server may have read it. Bytes still buffered here never reach a
            # server killed now, so it cannot have had the whole request.
            sent = sent or stdin.transport.get_write_buffer_size() == 0
            log.warning("the fork server did not answer in %g s; replacing it", REPLY_TIMEOUT_S)
            self._replace(proc)
            if sent:
                raise ForkUncertain(
                    f"the fork server did not answer within {REPLY_TIMEOUT_S:g} s"
                ) from None
            return None  # the end of the request never left this process
        except (OSError, RuntimeError):  # the server's input is gone
            if sent:
                raise ForkUncertain("the fork server ended while it was sent a runner") from None
            return None  # it never got the whole request
        finally:
            self._pending.pop(key, None)
        if result == _GONE:
            raise ForkUncertain("the fork server ended before it answered")
        return result if isinstance(result, Forked) else None

    def _replace(self, proc: asyncio.subprocess.Process) -> None:
        """Take a broken server down at once: no request is written to it from now on (the
        supervisor restarts it once it has exited)."""
        if self._proc is proc:
            self._up = False
        _kill(proc)

    # ---- the server's life ----------------------------------------------------------------

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        delay = BACKOFF_MIN_S
        while True:
            started = loop.time()
            try:
                await self._run_once()
            except asyncio.CancelledError:
                self._stop()
                raise
            except Exception as exc:
                log.warning("the fork server of hosted runners failed: %s", exc)
            finally:
                self._down()
            if loop.time() - started >= STABLE_S:
                delay = BACKOFF_MIN_S
            log.info("restarting the fork server of hosted runners in %g s", delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)

    async def _run_once(self) -> None:
        self._proc = proc = await asyncio.create_subprocess_exec(
            *self._command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=self._cwd,
            env=self._env,
            start_new_session=True,  # an agent's signals (a terminal's ^C) are not its
        )
        assert proc.stdout is not None
        try:
            while (message := await read_message(proc.stdout)) is not None:
                self._dispatch(message)
        except ForkServerError as exc:
            log.warning("the fork server broke the protocol: %s", exc)
            _kill(proc)
        code = await proc.wait()
        log.warning("the fork server of hosted runners (pid %d) exited with %d", proc.pid, code)

    def _dispatch(self, message: Mapping[str, Any]) -> None:
        op = message.get("op")
        if op == "ready":
            self._up = True
            log.info("the fork server of hosted runners is up (pid %s)", message.get("pid"))
        elif op in ("started", "refused"):
            key = (str(message.get("run_id")), _int(message.get("epoch")))
            answer = self._pending.get(key)
            waited = answer is not None and not answer.done()
            forked = None
            if op == "started":
                pid = _int(message.get("pid"))
                if not waited:
                    # Its request already ended (no answer in time: reported as not started,
                    # and the run moves on): a runner nobody tracks would run on unfenced
                    # until its first call. Stop it.
                    log.warning(
                        "the fork server started run %s (pid %d) after its request gave up; "
                        "killing it",
                        key[0],
                        pid,
                    )
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(pid, signal.SIGKILL)
                    return
                forked = Forked(pid, asyncio.get_running_loop().create_future())
                self._exits[pid] = forked.exit_code
            else:
                log.warning("the fork server refused run %s: %s", key[0], message.get("reason"))
            if answer is not None and waited:
                answer.set_result(forked)
        elif op == "exited":
            exit_code = self._exits.pop(_int(message.get("pid")), None)
            if exit_code is not None and not exit_code.done():
                exit_code.set_result(_int(message.get("code")))
        else:
            raise ForkServerError(f"unknown op {op!r}")

    def _down(self) -> None:
        """The server is gone: nobody waits for its answers; its runners' ends are unknown."""
        self._up = False
        for answer in self._pending.values():
            if not answer.done():
                answer.set_result(_GONE)
        for exit_code in self._exits.values():
            if not exit_code.done():
                exit_code.set_result(None)
        self._pending.clear()
        self._exits.clear()

    def _stop(self) -> None:
        proc = self._proc
        if proc is not None and proc.stdin is not None:
            with contextlib.suppress(Exception):
                proc.stdin.close()  # end of input: the server exits, its runners go on


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ForkServerError(f"expected an integer, got {value!r}")
    return value


def _printable_ascii(token: str) -> bool:
    """What the server accepts as a token (it never decodes one to check it)."""
    return bool(token) and all("!" <= c <= "~" for c in token)


def _kill(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


async def read_message(stream: asyncio.StreamReader) -> dict[str, Any] | None:
    """The server's next message, or None at the end of its output."""
    try:
        return await framing.read_message(stream)
    except framing.FramingError as exc:
        raise ForkServerError(str(exc)) from None
