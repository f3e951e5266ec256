"""The ``ray`` provider's handle, typed, and the attempt facts it keeps in the work dir.

The work dir is always local to the agent (whatever the cluster sees), so why a job was stopped
and when it started running survive an agent restart there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from providers.base import Handle, ProviderError

ENDED_BY_FILE = "ended_by"  # "cancelled" | "timed_out": written before we stop the job
RUNNING_SINCE_FILE = "running_since"  # wall-clock time wait() first saw the job RUNNING


@dataclass(frozen=True)
class RayJob:
    """What a ray handle says, typed."""

    submission_id: str
    work_dir: Path
    timeout_s: float | None
    command: bool  # a plain command: no outcome document, result null

    @classmethod
    def of(cls, handle: Handle) -> RayJob:
        if handle.provider != "ray":
            raise ProviderError(f"not a ray handle (provider {handle.provider!r})")
        try:
            d = handle.data
            timeout = d.get("timeout_s")
            return cls(
                submission_id=str(d["submission_id"]),
                work_dir=Path(str(d["work_dir"])),
                timeout_s=None if timeout is None else float(timeout),
                command=bool(d.get("command", False)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProviderError(f"malformed ray handle {handle.to_json()}: {exc}") from exc

    def running_since(self) -> float:
        """When the job was first seen RUNNING (recorded on first call; survives a restart).

        The step's timeout counts from here: Ray needs one to two seconds to start a job's
        supervisor before the step runs, and a job queued for resources is not yet running.
        Ray itself fails a job that cannot start (``RAY_JOB_START_TIMEOUT_SECONDS``).
        """
        path = self.work_dir / RUNNING_SINCE_FILE
        try:
            with open(path, "x", encoding="utf-8") as fh:
                now = time.time()
                fh.write(repr(now))
                return now
        except FileExistsError:
            try:
                return float(path.read_text(encoding="utf-8"))
            except ValueError:  # caught half-written: it was written just now
                return time.time()

    def overdue(self) -> bool:
        if self.timeout_s is None:
            return False
        return time.time() >= self.running_since() + self.timeout_s

    def mark_ended(self, reason: Literal["cancelled", "timed_out"]) -> None:
        """Record why we stop the job; the first reason wins."""
        try:
            with open(self.work_dir / ENDED_BY_FILE, "x", encoding="utf-8") as fh:
                fh.write(reason)
        except FileExistsError:
            pass

    def ended_by(self) -> str | None:
        try:
            return (self.work_dir / ENDED_BY_FILE).read_text(encoding="utf-8").strip() or None
        except FileNotFoundError:
            return None
