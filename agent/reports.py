"""What a runner tells the control plane about one attempt, as plain values.

A report body is journaled (encoded by ``agent.convert``) before it is sent; the journal adds
the per-agent sequence number, the attempt id and the fencing token. The provider contract's
``ErrorInfo`` and ``OutcomeState`` are reused so provider outcomes map across unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from providers.base import ErrorInfo, OutcomeState

# stdout/stderr: what the step wrote; agent: the agent's notes about it; a level name: a
# record of meridian.get_logger() at that level (meridian.core.runlog).
LogStream = Literal["stdout", "stderr", "agent", "debug", "info", "warning", "error", "critical"]


@dataclass(frozen=True)
class ProposeRunning:
    """Ask to move the attempt to RUNNING; infrastructure starts only after ACCEPT."""


@dataclass(frozen=True)
class HandleRecorded:
    handle_json: str
    resource_id: str


@dataclass(frozen=True)
class LogLine:
    at_unix_ms: int
    stream: LogStream
    text: str


@dataclass(frozen=True)
class LogChunk:
    lines: tuple[LogLine, ...]


@dataclass(frozen=True)
class AttemptFinished:
    outcome: OutcomeState
    result_json: str = ""
    error: ErrorInfo | None = None
    exit_code: int = 0
    # Set instead of result_json when the result stayed in a result store of this site:
    # its reference (meridian.core.resultref JSON form), journaled only after the put committed.
    result_ref_json: str = ""


ReportBody = ProposeRunning | HandleRecorded | LogChunk | AttemptFinished


@dataclass(frozen=True)
class HeldAttempt:
    attempt_id: str
    fencing_token: int


@dataclass(frozen=True)
class ProviderInfo:
    type: str
    config_schema_json: str


@dataclass(frozen=True)
class HelloInfo:
    """Everything the agent says about itself when a stream opens."""

    version: str
    labels: dict[str, str]
    providers: tuple[ProviderInfo, ...]
    capacity: int
    held_attempts: tuple[HeldAttempt, ...]
    hostname: str
    draining: bool
    degraded: str = ""  # why the agent takes no new work (e.g. "disk_full"); "" if healthy
    # The result stores configured at this site (names only) and the default one ("" = none).
    result_stores: tuple[str, ...] = ()
    default_result_store: str = ""
    # Hosted flow runners (decision 0018): slots offered, and runners alive here (run, epoch).
    runner_slots: int = 0
    held_runners: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class HeartbeatInfo:
    in_use: int
    held_attempts: tuple[HeldAttempt, ...]
    draining: bool
    degraded: str = ""
    loop_stall_ms: int = 0  # the longest event-loop stall since the previous heartbeat
    held_runners: tuple[tuple[str, int], ...] = ()  # hosted flow runners alive here


def infrastructure_failure(message: str, type_name: str = "meridian.AgentError") -> AttemptFinished:
    """A FAILED report for problems the agent or provider hit, not the step's own code."""
    return AttemptFinished(
        outcome="failed",
        error=ErrorInfo(error_class="infrastructure", type=type_name, message=message),
    )
