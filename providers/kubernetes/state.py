"""Reading Kubernetes Job and pod status into Meridian outcomes, and the attempt's local records.

Job and pod objects are the ``kubernetes`` client's models, read through attributes only (typed
``Any`` so this module needs no SDK import). The work dir records why Meridian stopped a Job
(``ended_by``), the final outcome and the pod log, so ``wait``/``logs``/``recover`` still answer
after the Job was deleted (cancel, ``delete_after_completion``, ``ttlSecondsAfterFinished``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from providers.base import ErrorInfo, Handle, Outcome, ProviderError
from providers.shared.outcome import cancelled_detail, parse_result_marker, timeout_detail

ENDED_BY_FILE = "ended_by"  # "cancelled" | "timed_out": written before the Job is deleted
RECORD_FILE = "k8s-outcome.json"
POD_LOG_FILE = "pod.log"
LOG_TAIL_LINES = 20
PULL_FAILURES = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
)
CONFIG_FAILURES = frozenset({"CreateContainerConfigError", "CreateContainerError"})
_INFRA_TYPE = "providers.base.ProviderError"
_OOM_MRO = ("builtins.MemoryError", "builtins.Exception")


@dataclass(frozen=True)
class Attempt:
    """What a kubernetes handle says, typed."""

    namespace: str
    name: str
    uid: str
    work_dir: Path
    timeout_s: float | None
    started_at_ms: int
    python_step: bool

    @classmethod
    def of(cls, handle: Handle) -> Attempt:
        if handle.provider != "kubernetes":
            raise ProviderError(f"not a kubernetes handle (provider {handle.provider!r})")
        try:
            d = handle.data
            timeout = d.get("timeout_s")
            return cls(
                namespace=str(d["namespace"]),
                name=str(d["name"]),
                uid=str(d["uid"]),
                work_dir=Path(str(d["work_dir"])),
                timeout_s=None if timeout is None else float(timeout),
                started_at_ms=int(d["started_at_ms"]),
                python_step=bool(d.get("python_step", True)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProviderError(f"malformed kubernetes handle {handle.to_json()}: {exc}") from exc

    def deadline(self) -> float | None:
        """The monotonic time at which the attempt times out (survives a re-attach)."""
        if self.timeout_s is None:
            return None
        return time.monotonic() + self.timeout_s - max(0.0, time.time() - self.started_at_ms / 1e3)

    # ---- local records -----------------------------------------------------------------

    def mark_ended(self, reason: str) -> None:
        """Record why Meridian stops the Job; the first reason wins."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with (
            contextlib.suppress(FileExistsError),
            open(self.work_dir / ENDED_BY_FILE, "x", encoding="utf-8") as fh,
        ):
            fh.write(reason)

    def ended_by(self) -> str | None:
        try:
            return (self.work_dir / ENDED_BY_FILE).read_text(encoding="utf-8").strip() or None
        except FileNotFoundError:
            return None

    def record(self, outcome: Outcome, pod_log: str | None) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if pod_log is not None:
            _write_atomic(self.work_dir / POD_LOG_FILE, pod_log)
        _write_atomic(self.work_dir / RECORD_FILE, json.dumps(dataclasses.asdict(outcome)))

    def recorded(self) -> Outcome | None:
        try:
            raw = json.loads((self.work_dir / RECORD_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        error = raw.pop("error", None)
        if error is not None:
            error = ErrorInfo(**{**error, "type_mro": tuple(error.get("type_mro", ()))})
        return Outcome(**raw, error=error)

    def saved_log(self) -> str | None:
        try:
            return (self.work_dir / POD_LOG_FILE).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ---- outcomes ------------------------------------------------------------------------------


def infrastructure(message: str, exit_code: int | None = None) -> Outcome:
    return Outcome("failed", exit_code, None, ErrorInfo("infrastructure", _INFRA_TYPE, message))


def stopped(reason: str, attempt: Attempt, how: str = "the Job was deleted") -> Outcome:
    """The outcome of an attempt Meridian (or the Job's deadline) stopped."""
    if reason == "timed_out":
        limit = f"{attempt.timeout_s:g}" if attempt.timeout_s is not None else "?"
        message = f"step exceeded its timeout of {limit} s and was killed ({how})"
        detail = timeout_detail(message)
        return Outcome(state="timed_out", error=detail)
    detail = cancelled_detail()
    return Outcome(state="cancelled", error=detail)


def job_condition(job: Any) -> tuple[str, str, str] | None:
    """("Complete"|"Failed", reason, message) once the Job has finished, else None.

    Only the terminal conditions count: SuccessCriteriaMet/FailureTarget precede them while
    pods are still being terminated.
    """
    for cond in getattr(job.status, "conditions", None) or ():
        if cond.type in ("Complete", "Failed") and cond.status == "True":
            return cond.type, cond.reason or "", cond.message or ""
    return None


def newest_pod(pods: Any) -> Any | None:
    items = list(getattr(pods, "items", None) or ())
    if not items:
        return None
    # backoffLimit 0 means one pod, but an evicted pod may have been replaced: use the latest.
    return max(items, key=lambda p: p.metadata.creation_timestamp or datetime.min)


def container_state(pod: Any | None, container: str) -> Any | None:
    if pod is None or pod.status is None:
        return None
    for status in pod.status.container_statuses or ():
        if status.name == container:
            return status.state
    return None


def waiting_reason(pod: Any | None, container: str) -> tuple[str, str] | None:
    state = container_state(pod, container)
    if state is not None and state.waiting is not None and state.waiting.reason:
        return state.waiting.reason, state.waiting.message or ""
    return None


def strip_timestamps(log: str) -> list[tuple[int, str]]:
    """``timestamps=true`` log lines as (unix ms, text); lines without a stamp get now."""
    return [split_timestamp(line) for line in log.split("\n")]


def split_timestamp(line: str) -> tuple[int, str]:
    """One ``timestamps=true`` log line as (unix ms, text); a line without a stamp gets now."""
    stamp, sep, text = line.partition(" ")
    at = parse_rfc3339_ms(stamp) if sep else None
    return (at, text) if at is not None else (int(time.time() * 1000), line)


def parse_rfc3339_ms(stamp: str) -> int | None:
    # Nanosecond stamps ("...05.123456789Z") are more digits than datetime reads: cut to micro.
    head, dot, frac = stamp.partition(".")
    if dot:
        digits = frac.rstrip("Z")
        stamp = f"{head}.{digits[:6]}Z" if digits.isdigit() else stamp
    try:
        return int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return None


def conclude(attempt: Attempt, condition: tuple[str, str, str], pod: Any, log: str) -> Outcome:
    """How a finished Job's attempt ended: the result marker first, then the container state."""
    if condition[0] == "Failed" and condition[1] == "DeadlineExceeded":
        return stopped("timed_out", attempt, "Job activeDeadlineSeconds")
    text = "\n".join(t for _, t in strip_timestamps(log)) if log else ""
    state = container_state(pod, "step")
    terminated = state.terminated if state is not None else None
    exit_code = terminated.exit_code if terminated is not None else None
    marked = parse_result_marker(text)
    if marked is not None:
        if exit_code is None:  # stepexec exits 0 on success and 1 on failure
            exit_code = 0 if marked.state == "succeeded" else 1
        return dataclasses.replace(marked, exit_code=exit_code)
    tail = "\n".join(text.rstrip("\n").split("\n")[-LOG_TAIL_LINES:])
    where = f"Job {attempt.namespace}/{attempt.name}"
    if terminated is None:
        why = f"{condition[0]} {condition[1]}: {condition[2]}".strip(": ")
        return infrastructure(f"{where} ended ({why}) but its pod's state is gone")
    if terminated.reason == "OOMKilled":
        message = (
            f"container was OOMKilled (exit code {exit_code}): the step used more than its "
            "memory limit; raise option 'memory'"
        )
        detail = ErrorInfo("transient", "builtins.MemoryError", message, tail, _OOM_MRO)
        return Outcome(state="failed", exit_code=exit_code, error=detail)
    if exit_code == 0 and not attempt.python_step:
        return Outcome(state="succeeded", exit_code=0, result_json="null")
    if exit_code == 0:
        return infrastructure(f"{where}: meridian-step exited 0 without an outcome line", 0)
    reason = f" ({terminated.reason})" if terminated.reason else ""
    message = f"container exited with code {exit_code}{reason} without reporting an outcome"
    if tail:
        message += f"; last log lines:\n{tail}"
    detail = ErrorInfo("transient", "providers.kubernetes.ContainerExit", message)
    return Outcome(state="failed", exit_code=exit_code, error=detail)
