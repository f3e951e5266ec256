"""A warm step worker: one pre-started interpreter that runs many steps, one at a time.

The ``process`` provider keeps a pool of these (``python -m meridian.stepworker``) so that a
step does not pay for a fresh interpreter and its imports. Each step runs exactly as
``meridian.stepexec`` runs it (``run_step``, which writes a large result to ``DIR/result.bin``,
then ``DIR/outcome.json`` via ``record_outcome``), with the per-step isolation a fresh process
would give:

* fd 1 and 2 point at the attempt's ``stdout.log`` / ``stderr.log`` for the step only;
* ``os.environ`` is exactly the step's environment and the cwd the step's cwd, both restored
  afterwards (nothing set for one step leaks into the next); so are signal handlers;
* ``meridian.context()`` is the step's own (from its ``spec.json``) and ``meridian.run``
  loggers are back at their defaults after it (``run_step`` resets both);
* processes the step started are killed when it ends (SIGTERM, then SIGKILL after ``--grace``
  seconds): the worker is a child subreaper, so orphaned grandchildren come back to it.

Protocol (stdin: commands from the agent, stdout: replies; both moved off fds 0/1 at start):
each message is a 4-byte big-endian length and a JSON object of at most ``MAX_MESSAGE_BYTES``.
The worker sends ``{"op": "ready", "pid"}`` once, then answers each ``{"op": "run", "work_dir",
"cwd", "env"}`` with ``{"op": "done", "work_dir", "state", "rss_kib", "retire"}`` after
``outcome.json`` is written. What to run (module, function, inputs, bundle) comes only from
``work_dir/spec.json``; a worker is bound to the code of its first step (bundle and
``PYTHONPATH``) and refuses a step of other code. End of input, a malformed message or a new
parent (the agent died) make the worker exit; a step the agent sent before it died (it may have
recorded the handle) still runs to its end and writes its outcome, so a restarted agent can
collect it. Nothing can send a new one: the pipe's writer is gone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from meridian.core.framing import HEADER, MAX_MESSAGE_BYTES
from meridian.stepexec import (
    error_outcome,
    flush_output,
    load_spec_file,
    record_outcome,
    run_step,
)

STDOUT_LOG = "stdout.log"  # the process provider's names (pinned by a test)
STDERR_LOG = "stderr.log"
_PR_SET_CHILD_SUBREAPER = 36
# Signals a step may reasonably install handlers for; restored after every step.
_RESTORED_SIGNALS = tuple(
    getattr(signal, name)
    for name in ("SIGTERM", "SIGINT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGCHLD")
    if hasattr(signal, name)
)


class ProtocolError(Exception):
    """A message from the agent that the worker does not accept."""


def read_message(fd: int) -> dict[str, Any] | None:
    """The next message on ``fd``, or None at end of input."""
    body = read_frame(fd)
    if body is None:
        return None
    value = json.loads(body)
    if not isinstance(value, dict):
        raise ProtocolError("a message must be a JSON object")
    return value


def read_frame(fd: int, limit: int = MAX_MESSAGE_BYTES) -> bytearray | None:
    """The body of the next message on ``fd`` (at most ``limit`` bytes), or None at end of input.

    The body is read straight into the returned ``bytearray``: no other copy of it exists in
    this process, so a caller can wipe a secret it carries (``meridian.flowzygote``)."""
    header = bytearray(HEADER.size)
    if not _read_into(fd, header):
        return None
    (size,) = HEADER.unpack(header)
    if size > limit:
        raise ProtocolError(f"message of {size} bytes exceeds {limit}")
    body = bytearray(size)
    if size and not _read_into(fd, body):
        raise ProtocolError("input ended inside a message")
    return body


def _read_into(fd: int, buffer: bytearray) -> bool:
    """Fill ``buffer`` from ``fd``; False at end of input before its first byte."""
    view = memoryview(buffer)
    try:
        got = 0
        while got < len(buffer):
            n = os.readv(fd, [view[got:]])
            if not n:
                if got:
                    raise ProtocolError("input ended inside a message")
                return False
            got += n
        return True
    finally:
        view.release()


def write_message(fd: int, message: Mapping[str, Any]) -> None:
    body = json.dumps(message).encode("utf-8")
    data = HEADER.pack(len(body)) + body
    while data:
        data = data[os.write(fd, data) :]


def _string_map(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and k and "=" not in k and "\0" not in k and isinstance(v, str)
        for k, v in value.items()
    ):
        raise ProtocolError("'env' must be an object of environment variables")
    return value


def _run_request(message: Mapping[str, Any]) -> tuple[Path, Path, dict[str, str]]:
    if message.get("op") != "run":
        raise ProtocolError(f"unknown op {message.get('op')!r}")
    work_dir, cwd = message.get("work_dir"), message.get("cwd")
    if not isinstance(work_dir, str) or not isinstance(cwd, str):
        raise ProtocolError("'work_dir' and 'cwd' must be paths")
    if not os.path.isabs(work_dir) or not os.path.isabs(cwd):
        raise ProtocolError("'work_dir' and 'cwd' must be absolute paths")
    return Path(work_dir), Path(cwd), _string_map(message.get("env"))


def set_child_subreaper() -> bool:
    """Make orphaned descendants our children, so step end can find and kill them all."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def descendants() -> list[int]:
    """Every process below this one, read from ``/proc/<pid>/task/*/children`` (no scan)."""
    found: list[int] = []
    frontier = [os.getpid()]
    while frontier:
        pid = frontier.pop()
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as fh:
                    children = [int(c) for c in fh.read().split()]
            except (OSError, ValueError):
                continue
            for child in children:
                if child not in found:
                    found.append(child)
                    frontier.append(child)
    return found


def _reap() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def kill_descendants(grace_s: float) -> None:
    """SIGTERM what the step left running, SIGKILL what is left after ``grace_s``; reap all."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        _reap()
        pids = descendants()
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            _reap()
            if not descendants():
                return
            time.sleep(0.01)


def rss_kib() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            pages = int(fh.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * (os.sysconf("SC_PAGE_SIZE") // 1024)


@contextlib.contextmanager
def step_scope(work_dir: Path, cwd: Path, env: Mapping[str, str]) -> Iterator[None]:
    """Output files, environment, cwd and signal handlers of one step; all restored after."""
    flush_output()
    saved_fds = (os.dup(1), os.dup(2))
    saved_streams = (sys.stdout, sys.stderr)
    saved_env = dict(os.environ)
    saved_cwd = os.getcwd()
    saved_signals = {sig: signal.getsignal(sig) for sig in _RESTORED_SIGNALS}
    try:
        for fd, name in ((1, STDOUT_LOG), (2, STDERR_LOG)):
            target = os.open(work_dir / name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            os.dup2(target, fd)
            os.close(target)
        os.environ.clear()
        os.environ.update(env)
        os.chdir(cwd)
        yield
    finally:
        sys.stdout, sys.stderr = saved_streams
        flush_output()
        for fd, saved in zip((1, 2), saved_fds, strict=True):
            os.dup2(saved, fd)
            os.close(saved)
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)
        signal.alarm(0)
        for sig, handler in saved_signals.items():
            with contextlib.suppress(OSError, ValueError, TypeError):
                signal.signal(sig, handler)


class Worker:
    """The loop: read a command, run the step it names, answer; one step at a time."""

    def __init__(self, commands: int, replies: int, grace_s: float) -> None:
        self.commands = commands
        self.replies = replies
        self.grace_s = grace_s
        self.parent = os.getppid()
        self.code: tuple[str, str] | None = None  # (bundle dir, PYTHONPATH)
        self.home = os.getcwd()
        self.threads = threading.active_count()

    def serve(self) -> int:
        try:
            write_message(self.replies, {"op": "ready", "pid": os.getpid()})
        except OSError:
            return 0  # the agent is already gone
        while True:
            try:
                message = read_message(self.commands)
            except (ProtocolError, ValueError) as exc:
                print(f"meridian-worker: {exc}; exiting", file=sys.stderr)
                return 2
            if message is None:
                return 0  # the agent closed our input (or died): no new work will come
            try:
                work_dir, cwd, env = _run_request(message)
            except ProtocolError as exc:
                print(f"meridian-worker: {exc}; exiting", file=sys.stderr)
                return 2
            reply = self.run(work_dir, cwd, env)
            with contextlib.suppress(OSError):  # BrokenPipe: the agent died meanwhile
                write_message(self.replies, reply)
            # A step sent before the agent died still runs (the agent may have recorded its
            # handle); after it, a worker whose agent is gone (a new parent) stops.
            if reply["retire"] or os.getppid() != self.parent:
                return 0

    def run(self, work_dir: Path, cwd: Path, env: Mapping[str, str]) -> dict[str, Any]:
        try:
            spec = load_spec_file(work_dir)
            outcome = self._bound(spec, env)
        except (OSError, ValueError) as exc:
            outcome = error_outcome(RuntimeError(f"cannot read the step spec: {exc}"))
            outcome["error"]["error_class"] = "infrastructure"
        if outcome is None:
            with step_scope(work_dir, cwd, env):
                outcome = run_step(spec, work_dir)  # result.bin goes next to outcome.json
            kill_descendants(self.grace_s)
        record_outcome(work_dir, json.dumps(outcome))
        # A step that left threads running would run on into the next steps: retire instead.
        retire = threading.active_count() > self.threads
        return {
            "op": "done",
            "work_dir": str(work_dir),
            "state": outcome["state"],
            "rss_kib": rss_kib(),
            "retire": retire,
        }

    def _bound(self, spec: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any] | None:
        """None when this worker may run ``spec``, else the failure outcome to record.

        A worker's code is its bundle plus the step's ``PYTHONPATH`` (which a fresh interpreter
        would have put on ``sys.path``): both are fixed by its first step, because modules of
        two code sets can share names and ``sys.modules`` holds one of each name.
        """
        code = (str(spec.get("bundle_dir") or ""), env.get("PYTHONPATH", ""))
        if self.code is None:
            self.code = code
            entries = [e for e in code[1].split(os.pathsep) if e and e not in sys.path]
            sys.path[0:0] = entries
        if code == self.code:
            return None
        outcome = error_outcome(
            RuntimeError(f"this worker runs the code of {self.code!r}, not of {code!r}")
        )
        outcome["error"]["error_class"] = "infrastructure"
        return outcome


def take_protocol_fds() -> tuple[int, int]:
    """Move the agent's pipes off fds 0/1, which become /dev/null and stderr between steps."""
    commands, replies = os.dup(0), os.dup(1)
    # A step's forked (not exec'd) children must not hold the agent's pipes open: the agent
    # sees the worker's end as the end of its output.
    os.register_at_fork(after_in_child=lambda: _close_quietly(commands, replies))
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    return commands, replies


def _close_quietly(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meridian-worker", description=__doc__.splitlines()[0])
    parser.add_argument("--grace", type=float, default=5.0, help="SIGTERM->SIGKILL grace, s")
    args = parser.parse_args(argv)
    commands, replies = take_protocol_fds()
    set_child_subreaper()
    code = Worker(commands, replies, max(0.0, args.grace)).serve()
    flush_output()
    # os._exit: threads a step left behind must not keep the worker alive.
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
