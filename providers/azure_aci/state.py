"""What the ``azure-aci`` provider knows about one attempt outside Azure, and how it reads groups.

``Attempt`` is the typed handle. Because a finished container group is deleted, why an attempt
ended (cancelled, timed out, or the outcome and log read from the group) is written to the
attempt's work dir first; ``recorded`` reads it back, also after an agent restart. The group
helpers read the SDK's ``ContainerGroup`` model by attribute, so this module imports no Azure.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from providers.base import ErrorInfo, Handle, Outcome, ProviderError
from providers.shared.outcome import cancelled_detail, parse_result_marker, timeout_detail

PROVIDER_TYPE = "azure-aci"
ENDED_BY_FILE = "aci-ended-by"  # "cancelled" | "timed_out", written before the group is deleted
OUTCOME_FILE = "aci-outcome.json"  # the outcome read from the group, kept after its deletion
LOGS_FILE = "aci-logs.txt"  # the final container log, kept for logs() after the deletion
_TERMINAL_GROUP_STATES = {"Succeeded", "Failed", "Stopped"}


def azure_message(exc: BaseException) -> str:
    """Azure's own words for an error: ``Code: message`` from ARM's error body when present."""
    error = getattr(exc, "error", None)
    code, message = getattr(error, "code", None), getattr(error, "message", None)
    if code and message:
        return f"{code}: {message}"
    return str(getattr(exc, "message", None) or exc).strip()


@dataclass(frozen=True)
class Attempt:
    """What an azure-aci handle says, typed."""

    group: str
    resource_group: str
    work_dir: Path
    timeout_s: float | None
    started_at_ms: int
    python_step: bool

    @classmethod
    def of(cls, handle: Handle) -> Attempt:
        if handle.provider != PROVIDER_TYPE:
            raise ProviderError(f"not an azure-aci handle (provider {handle.provider!r})")
        try:
            d = handle.data
            timeout = d.get("timeout_s")
            return cls(
                group=str(d["group"]),
                resource_group=str(d["resource_group"]),
                work_dir=Path(str(d["work_dir"])),
                timeout_s=None if timeout is None else float(timeout),
                started_at_ms=int(d["started_at_ms"]),
                python_step=bool(d.get("python_step", True)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProviderError(f"malformed azure-aci handle {handle.to_json()}: {exc}") from exc

    def overdue(self) -> bool:
        """Whether the attempt ran past its timeout (wall clock: survives a re-attach)."""
        return self.timeout_s is not None and time.time() * 1000 >= (
            self.started_at_ms + self.timeout_s * 1000
        )

    # -- what survives the group: files in the attempt's work dir --------------------------

    def mark_ended(self, reason: str) -> None:
        """Record why we are deleting the group; the first reason wins."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with (
            contextlib.suppress(FileExistsError),
            open(self.work_dir / ENDED_BY_FILE, "x", encoding="utf-8") as fh,
        ):
            fh.write(reason)

    def record(self, outcome: Outcome, logs: str) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.work_dir / LOGS_FILE, logs)
        write_atomic(self.work_dir / OUTCOME_FILE, json.dumps(dataclasses.asdict(outcome)))

    def saved_logs(self) -> str | None:
        try:
            return (self.work_dir / LOGS_FILE).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def recorded(self) -> Outcome | None:
        """How the attempt ended, if that is already known locally."""
        with contextlib.suppress(FileNotFoundError):
            reason = (self.work_dir / ENDED_BY_FILE).read_text(encoding="utf-8").strip()
            if reason == "timed_out":
                limit = f"{self.timeout_s:g}" if self.timeout_s is not None else "?"
                message = f"step exceeded its timeout of {limit} s; its container group was deleted"
                detail = timeout_detail(message)
                return Outcome(state="timed_out", error=detail)
            if reason == "cancelled":
                detail = cancelled_detail()
                return Outcome(state="cancelled", error=detail)
        with contextlib.suppress(FileNotFoundError):
            raw = json.loads((self.work_dir / OUTCOME_FILE).read_text(encoding="utf-8"))
            error = raw.get("error")
            if error is not None:
                error = ErrorInfo(**{**error, "type_mro": tuple(error.get("type_mro", ()))})
            return Outcome(**{**raw, "error": error})
        return None


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def infrastructure(message: str, exit_code: int | None = None) -> Outcome:
    detail = ErrorInfo("infrastructure", "providers.base.ProviderError", message)
    return Outcome(state="failed", exit_code=exit_code, error=detail)


def noted(outcome: Outcome | None, note: str) -> Outcome:
    if outcome is None or outcome.error is None:
        return infrastructure(note.lstrip("; "))
    error = dataclasses.replace(outcome.error, message=outcome.error.message + note)
    return dataclasses.replace(outcome, error=error)


def container_state(group: Any) -> Any:
    containers = getattr(group, "containers", None) or []
    view = getattr(containers[0], "instance_view", None) if containers else None
    return getattr(view, "current_state", None)


def group_ended(group: Any) -> bool:
    """Whether the group's one container has run to its end (or ARM gave up on it)."""
    state = container_state(group)
    if state is not None and state.state == "Terminated":
        return True
    view = getattr(group, "instance_view", None)
    return group.provisioning_state == "Failed" or (
        view is not None and view.state in _TERMINAL_GROUP_STATES
    )


def group_events(group: Any) -> str:
    view = getattr(group, "instance_view", None)
    events = [f"{e.name}: {e.message}" for e in (getattr(view, "events", None) or []) if e.message]
    return "; ".join(events[-5:])


def outcome_of(attempt: Attempt, group: Any, text: str) -> Outcome:
    """How an ended group's attempt went, from its container state and its log ``text``.

    The step's outcome marker wins; else a plain command's exit code 0 is success; anything else
    is a failure whose message carries the exit code, ACI's detail, events and the log's tail.
    """
    state = container_state(group)
    exit_code = getattr(state, "exit_code", None)
    outcome = parse_result_marker(text)
    if outcome is not None:
        outcome = dataclasses.replace(outcome, exit_code=exit_code)
    elif exit_code == 0 and not attempt.python_step:
        outcome = Outcome(state="succeeded", exit_code=0, result_json="null")
    else:
        detail = getattr(state, "detail_status", None) or getattr(state, "state", None)
        what = "without an exit code" if exit_code is None else f"with exit code {exit_code}"
        message = f"container group {attempt.group!r} ended {what} ({detail or 'no detail'})"
        events = group_events(group)
        message += f" without reporting an outcome{'; events: ' + events if events else ''}"
        tail = "\n".join(text.splitlines()[-20:])
        message += f"; last log lines:\n{tail}" if tail else ""
        if exit_code in (None, 0):
            outcome = infrastructure(message, exit_code)
        else:
            detail_ = ErrorInfo("transient", "providers.base.ProviderError", message)
            outcome = Outcome(state="failed", exit_code=exit_code, error=detail_)
    return outcome
