"""The fork server of hosted flow runners (decision 0018, "Fork server").

``python -m meridian.flowzygote`` is started by an agent that offers runner slots. It imports
once what a runner needs (``meridian.flowexec``, the client, ``meridian.sdk.runner``, gRPC and
the protos) — but opens no channel and starts no thread — and then forks one child per run,
which sets itself up as a fresh ``python -m meridian.flowexec`` would be and calls the same
``meridian.flowexec.main``. The child skips the interpreter's start and the imports.

Protocol (the agent's pipes, moved off fds 0/1 at start; the framing of
``meridian.stepworker``: 4-byte big-endian length, at most ``MAX_MESSAGE_BYTES``):

* ``{"op": "ready", "pid"}`` once the imports are done;
* request: a JSON object ``{"op": "run", "run_id", "epoch", "env", "work_dir", "log_path"}``,
  then a NUL byte, then the run's token (printable ASCII) — all in one message;
* replies: ``{"op": "started", "run_id", "epoch", "pid"}``, or ``{"op": "refused", "run_id",
  "epoch", "reason"}`` (nothing was forked — a request it cannot run faithfully, or a failed
  ``fork()`` such as EAGAIN at a pids limit; the agent starts a fresh process instead, and the
  server goes on); and for each child that
  ends, ``{"op": "exited", "pid", "code"}`` (``code`` as ``Popen.returncode``: -N for signal N).

**The token.** Each child inherits this process's memory, so the server keeps no run's token
once that run's child is forked: a request is read straight into one ``bytearray``, the token is
never decoded here (only the child decodes it), and the buffer is zeroed right after the fork.
The token is not in this process's environment or command line either.

**Environment.** A child's ``os.environ`` is exactly the request's ``env`` plus
``MERIDIAN_FLOWEXEC_TOKEN``. The modules imported here read some settings at import
(``MERIDIAN_RUNNER_LEASE_S``, ``PYTHONPATH`` through ``sys.path``), so a request whose
environment differs from the one this server was started with in anything but
``MERIDIAN_FLOWEXEC_*`` is refused, never run with stale settings.

End of input (the agent closed it, or died) or a malformed request: the server exits; its
children go on (each leads its own session) and an agent watches them by pid and start time.
The server never runs user code itself: a run's bundle is imported only in its child.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import random
import select
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from meridian import flowexec
from meridian.stepexec import flush_output
from meridian.stepworker import ProtocolError, read_frame, take_protocol_fds, write_message

TOKEN_VAR = flowexec.PREFIX + "TOKEN"
# What a runner imports: loaded once here, so no child pays for it.
PRELOAD = (
    "grpc",
    "protos.meridian.v1.common_pb2",
    "protos.meridian.v1.control_pb2",
    "protos.meridian.v1.control_pb2_grpc",
    "meridian.models",
    "meridian.client",
    "meridian.sdk.runner",
)
# Signals whose handlers this server changes; a child gets back the ones it started with.
_CHANGED_SIGNALS = (signal.SIGCHLD,)


@dataclass(frozen=True)
class RunRequest:
    run_id: str
    epoch: int
    env: dict[str, str]
    work_dir: str
    log_path: str
    token_at: int  # where the token starts in the request's buffer

    def __repr__(self) -> str:  # no environment, no token
        return f"RunRequest(run_id={self.run_id!r}, epoch={self.epoch})"


def parse_request(body: bytearray) -> RunRequest:
    """Check a request; the token stays where it is, as bytes (never a ``str`` here)."""
    sep = body.find(0)
    if sep < 0:
        raise ProtocolError("a request carries its token after a NUL byte")
    if sep + 1 == len(body) or any(b < 0x21 or b > 0x7E for b in memoryview(body)[sep + 1 :]):
        raise ProtocolError("the token must be printable ASCII")
    try:
        value = json.loads(body[:sep])
    except ValueError as exc:
        raise ProtocolError(f"malformed request: {exc}") from None
    if not isinstance(value, dict) or value.get("op") != "run":
        raise ProtocolError("a request must be a JSON object with op 'run'")
    run_id, epoch = value.get("run_id"), value.get("epoch")
    if not isinstance(run_id, str) or not run_id or not isinstance(epoch, int):
        raise ProtocolError("'run_id' must be a string and 'epoch' an integer")
    paths = (value.get("work_dir"), value.get("log_path"))
    if not all(isinstance(p, str) and os.path.isabs(p) for p in paths):
        raise ProtocolError("'work_dir' and 'log_path' must be absolute paths")
    env = _environment(value.get("env"))
    return RunRequest(run_id, epoch, env, str(paths[0]), str(paths[1]), sep + 1)


def _environment(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and k and "=" not in k and "\0" not in k and isinstance(v, str)
        for k, v in value.items()
    ):
        raise ProtocolError("'env' must be an object of environment variables")
    if TOKEN_VAR in value:
        raise ProtocolError(f"the token travels after the request, never in 'env' ({TOKEN_VAR})")
    return value


def initial_environment() -> dict[str, str]:
    """The environment this process was started with (before the interpreter changed its own,
    e.g. PEP 538's ``LC_CTYPE``), from ``/proc/self/environ``; ``os.environ`` off Linux."""
    try:
        with open("/proc/self/environ", "rb") as fh:
            raw = fh.read()
    except OSError:
        return dict(os.environ)
    pairs = (entry.partition(b"=") for entry in raw.split(b"\0") if b"=" in entry)
    return {os.fsdecode(k): os.fsdecode(v) for k, _, v in pairs}


def _settings(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if not k.startswith(flowexec.PREFIX)}


def _wipe(buffer: bytearray) -> None:
    buffer[:] = bytes(len(buffer))  # same length: overwritten in place


def _threads() -> int:
    """Threads of this process: Python's, and any a native library started (``/proc``)."""
    try:
        native = len(os.listdir("/proc/self/task"))
    except OSError:
        native = 1
    return max(threading.active_count(), native)


class ForkServer:
    """The loop: a request forks a child; a child's end is reported; end of input stops it."""

    def __init__(self, commands: int, replies: int, entry: Callable[[], int]) -> None:
        self.commands = commands
        self.replies = replies
        self.entry = entry
        self.settings = _settings(initial_environment())
        self.saved_signals = {sig: signal.getsignal(sig) for sig in _CHANGED_SIGNALS}
        self.wake_r, self.wake_w = os.pipe()
        for fd in (self.wake_r, self.wake_w):
            os.set_blocking(fd, False)
        # A child's end wakes the select loop: SIGCHLD writes a byte to the wake-up pipe.
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.set_wakeup_fd(self.wake_w)

    def serve(self) -> int:
        self._reply({"op": "ready", "pid": os.getpid()})
        while True:
            readable, _, _ = select.select([self.commands, self.wake_r], [], [])
            if self.wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self.wake_r, 512):
                        pass
                self.reap()
            if self.commands not in readable:
                continue
            try:
                body = read_frame(self.commands)
            except (ProtocolError, OSError) as exc:
                print(f"meridian-flowzygote: {exc}; exiting", file=sys.stderr)
                return 2
            if body is None:
                return 0  # the agent closed our input (or died); the children go on
            try:
                self.handle(body)
            except ProtocolError as exc:
                print(f"meridian-flowzygote: {exc}; exiting", file=sys.stderr)
                return 2
            finally:
                _wipe(body)

    def _refuse(self, request: RunRequest, reason: str) -> None:
        self._reply(
            {"op": "refused", "run_id": request.run_id, "epoch": request.epoch, "reason": reason}
        )

    def handle(self, body: bytearray) -> None:
        request = parse_request(body)
        reason = self.refusal(request)
        if reason:
            self._refuse(request, reason)
            return
        flush_output()  # nothing buffered here is written twice
        try:
            pid = os.fork()
        except OSError as exc:  # EAGAIN at a pids limit, ENOMEM: nothing was forked
            self._refuse(request, f"fork failed: {exc}")
            return
        if pid == 0:
            self.become_runner(request, body)
        _wipe(body)  # the child has its copy; this process keeps none
        self._reply({"op": "started", "run_id": request.run_id, "epoch": request.epoch, "pid": pid})

    def refusal(self, request: RunRequest) -> str:
        """Why ``request`` cannot be forked here ("" when it can)."""
        threads = _threads()
        if threads != 1:
            return f"the fork server has {threads} threads (a fork copies only one)"
        settings = _settings(request.env)
        if settings != self.settings:
            names = sorted(
                k
                for k in settings.keys() | self.settings.keys()
                if settings.get(k) != self.settings.get(k)
            )
            return f"the environment differs from the fork server's in {', '.join(names[:10])}"
        return ""

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            self._reply({"op": "exited", "pid": pid, "code": code})

    def _reply(self, message: Mapping[str, Any]) -> None:
        with contextlib.suppress(OSError):  # the agent is gone: end of input stops us next
            write_message(self.replies, message)

    # ---- in the child ---------------------------------------------------------------------

    def become_runner(self, request: RunRequest, body: bytearray) -> NoReturn:
        """Turn this fresh fork into the run's runner; never returns."""
        code = 1
        try:
            token = body[request.token_at :].decode("ascii")
            _wipe(body)
            self._detach(request)
            os.environ.clear()
            os.environ.update(request.env)
            os.environ[TOKEN_VAR] = token
            del token
            random.seed()  # forked children would share the server's PRNG state
            code = run_entry(self.entry)
        except BaseException:
            traceback.print_exc()
        exit_like_an_interpreter(code)

    def _detach(self, request: RunRequest) -> None:
        """Own session, the run's log on fd 1 and 2, no pipe of the server, cwd, signals."""
        os.setsid()
        signal.set_wakeup_fd(-1)
        for sig, handler in self.saved_signals.items():
            signal.signal(sig, handler)
        for fd in (self.commands, self.replies, self.wake_r, self.wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        log = os.open(request.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        null = os.open(os.devnull, os.O_RDONLY)
        for source, target in ((null, 0), (log, 1), (log, 2)):
            os.dup2(source, target)
        os.close(null)
        os.close(log)
        home = os.getcwd()
        os.chdir(request.work_dir)
        # ``python -m`` puts its start directory first on sys.path: a fresh runner's is its
        # work dir.
        if sys.path and sys.path[0] == home:
            sys.path[0] = request.work_dir


def run_entry(entry: Callable[[], int]) -> int:
    """Call ``entry`` as ``sys.exit(entry())`` would end an interpreter: its exit code."""
    try:
        result = entry()
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return (exc.code or 0) & 0xFF
        print(exc.code, file=sys.stderr)
        return 1
    return result if isinstance(result, int) else 0


def exit_like_an_interpreter(code: int) -> NoReturn:
    """End as a fresh interpreter would (threads joined, atexit run, output flushed), without
    unwinding the fork server's stack."""
    main = threading.main_thread()
    for thread in threading.enumerate():
        if thread is not main and not thread.daemon:
            with contextlib.suppress(RuntimeError):
                thread.join()
    with contextlib.suppress(BaseException):
        atexit._run_exitfuncs()
    flush_output()
    os._exit(code)


def preload() -> None:
    """Import what a runner needs, with the runner's defaults set first (read at import)."""
    import importlib

    flowexec.apply_defaults(os.environ)
    for name in PRELOAD:
        importlib.import_module(name)


def main(entry: Callable[[], int] = flowexec.main) -> NoReturn:
    """``entry``: what each child runs (tests pass a stand-in for ``meridian.flowexec``)."""
    commands, replies = take_protocol_fds()
    server = ForkServer(commands, replies, entry)
    preload()
    code = server.serve()
    flush_output()
    os._exit(code)


if __name__ == "__main__":
    main()
