"""One ``process`` attempt: its handle, typed, and the files it leaves in its work dir.

The work dir holds the step's output files, why the agent stopped it and stepexec's (or the
warm worker's) ``outcome.json``, so what happened to an attempt is still known after an agent
restart.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from providers.base import ErrorInfo, Handle, Outcome, ProviderError
from providers.shared.outcome import cancelled_detail, read_outcome, timeout_detail

STDOUT_LOG = "stdout.log"
STDERR_LOG = "stderr.log"
ENDED_BY_FILE = "ended_by"  # "cancelled" | "timed_out": written before we signal the group
STDERR_TAIL_LINES = 20
STDERR_TAIL_BYTES = 4 * 1024


@dataclass(frozen=True)
class Attempt:
    """What a process handle says, typed."""

    pid: int
    pgid: int
    start_time: int | None
    work_dir: Path
    timeout_s: float | None
    started_at_ms: int
    warm: bool = False  # pid names a warm worker that may outlive this step, not the step

    @classmethod
    def of(cls, handle: Handle) -> Attempt:
        if handle.provider != "process":
            raise ProviderError(f"not a process handle (provider {handle.provider!r})")
        try:
            d = handle.data
            start = d.get("start_time")
            timeout = d.get("timeout_s")
            return cls(
                pid=int(d["pid"]),
                pgid=int(d["pgid"]),
                start_time=None if start is None else int(start),
                work_dir=Path(str(d["work_dir"])),
                timeout_s=None if timeout is None else float(timeout),
                started_at_ms=int(d.get("started_at_ms", 0)),
                warm=d.get("warm") is True,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProviderError(f"malformed process handle {handle.to_json()}: {exc}") from exc

    def deadline(self) -> float | None:
        """The monotonic time at which the attempt times out (survives a re-attach)."""
        if self.timeout_s is None:
            return None
        elapsed = max(0.0, time.time() - self.started_at_ms / 1000)
        return time.monotonic() + self.timeout_s - elapsed


def mark_ended(work_dir: Path, reason: str) -> None:
    """Record why we are stopping the step; the first reason wins."""
    try:
        with open(work_dir / ENDED_BY_FILE, "x", encoding="utf-8") as fh:
            fh.write(reason)
    except FileExistsError:
        pass


def ended_by(work_dir: Path) -> str | None:
    try:
        return (work_dir / ENDED_BY_FILE).read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None


def stderr_tail(work_dir: Path) -> str:
    try:
        with open(work_dir / STDERR_LOG, "rb") as fh:
            fh.seek(max(0, os.fstat(fh.fileno()).st_size - STDERR_TAIL_BYTES))
            raw = fh.read()
    except OSError:
        return ""
    lines = raw.decode("utf-8", errors="replace").splitlines()[-STDERR_TAIL_LINES:]
    return "\n".join(lines)


def describe_exit(rc: int | None) -> str:
    if rc is None:
        return "ended (its exit code is unknown after the agent re-attached)"
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = str(-rc)
        return f"exited with code {rc} (signal {name})"
    return f"exited with code {rc}"


def conclude(attempt: Attempt, rc: int | None) -> Outcome:
    """How the attempt ended, from its work dir and the exit code (None when unknown)."""
    reason = ended_by(attempt.work_dir)
    if reason == "timed_out":
        limit = f"{attempt.timeout_s:g}" if attempt.timeout_s is not None else "?"
        message = f"step exceeded its timeout of {limit} s and was killed"
        detail = timeout_detail(message)
        return Outcome(state="timed_out", exit_code=rc, error=detail)
    if reason == "cancelled":
        detail = cancelled_detail()
        return Outcome(state="cancelled", exit_code=rc, error=detail)
    outcome = read_outcome(attempt.work_dir)
    if outcome is not None:
        if rc is None:  # re-attached: stepexec exits 0 on success and 1 on failure
            rc = 0 if outcome.state == "succeeded" else 1
        return dataclasses.replace(outcome, exit_code=rc)
    if attempt.warm:
        who = f"the warm worker running the step (pid {attempt.pid})"
    else:
        who = "step process"
    message = f"{who} {describe_exit(rc)} without reporting an outcome"
    tail = stderr_tail(attempt.work_dir)
    if tail:
        message += f"; last stderr lines:\n{tail}"
    detail = ErrorInfo("infrastructure", "providers.base.ProviderError", message)
    return Outcome(state="failed", exit_code=rc, error=detail)
