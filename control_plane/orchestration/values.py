"""Plain values passed between the API layer, the use cases and the dispatcher (no protobuf,
no rows): what comes in (submissions, reports) and what must go out after a commit (Effects)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from control_plane.orchestration.ready import ReadyEntry
from meridian.core.errorinfo import ErrorInfo
from meridian.core.kinds import ReportKind
from meridian.core.resultref import ResultRef
from meridian.core.spec import StepSpec
from meridian.core.states import AttemptState, StepState


@dataclass(frozen=True)
class StepSubmission:
    key: str
    spec: StepSpec  # validated by the API layer
    inputs_json: str
    # Caching across runs: reuse the newest completed result with this key ("" = never).
    cache_key: str = ""
    cache_expires_after_s: float = 0.0  # 0 = a result of any age
    # The stored results the inputs name (docs/results.md), each distinct one once.
    input_refs: tuple[ResultRef, ...] = ()


@dataclass(frozen=True)
class SubmittedStep:
    key: str
    step_run_id: str
    state: StepState
    existing: bool
    result_json: str = ""  # set with error when the step run had already ended
    error: ErrorInfo | None = None
    outcome_omitted: bool = False  # it had ended, but its outcome did not fit the answer
    result_ref_json: str = ""  # instead of result_json: the result stayed at its site


@dataclass(frozen=True)
class LogLineIn:
    at: dt.datetime
    stream: str
    text: str


@dataclass(frozen=True)
class ReportIn:
    seq: int
    attempt_id: str
    fencing_token: int
    at: dt.datetime
    kind: ReportKind
    handle_json: str = ""
    resource_id: str = ""
    lines: tuple[LogLineIn, ...] = ()
    outcome: AttemptState | None = None  # SUCCEEDED | FAILED | TIMED_OUT | CANCELLED
    result_json: str = ""
    # Instead of result_json: the reference to a result kept in the site's store, as the
    # agent sent it (checked when applied: its environment and an advertised store).
    result_ref_json: str = ""
    error: ErrorInfo | None = None
    exit_code: int | None = None


@dataclass(frozen=True)
class DecisionOut:
    attempt_id: str
    fencing_token: int
    accept: bool
    reason: str = ""
    agent_id: str = ""  # set when sent outside a report batch's reply


@dataclass(frozen=True)
class AssignOut:
    agent_id: str
    attempt_id: str
    fencing_token: int
    flow_run_id: str
    step_run_id: str
    step_key: str
    attempt_number: int
    spec: StepSpec
    bundle_sha256: str
    inputs_json: str
    # The references the inputs name (JSON form each), checked at submission.
    input_refs_json: tuple[str, ...] = ()


@dataclass(frozen=True)
class CancelOut:
    agent_id: str
    attempt_id: str
    fencing_token: int
    reason: str
    grace_s: float = 10.0


@dataclass(frozen=True)
class AssignRunnerOut:
    """Run a flow body on this agent (decision 0018): the AssignRunner frame's values."""

    agent_id: str
    flow_run_id: str
    runner_epoch: int
    bundle_sha256: str
    entrypoint: str
    runner_token: str
    client_address: str = ""  # ":PORT" = the host the agent dialled
    ca_certificate_pem: bytes = b""


@dataclass(frozen=True)
class CancelRunnerOut:
    """Stop the hosted runner of this run on its agent (after a grace)."""

    agent_id: str
    flow_run_id: str
    runner_epoch: int
    reason: str
    grace_s: float


@dataclass
class Effects:
    """What must happen after the transaction commits (never before: nothing is sent for a
    change that might still roll back)."""

    touched_runs: set[str] = field(default_factory=set)
    wake_scheduler: bool = False
    assigns: list[AssignOut] = field(default_factory=list)
    cancels: list[CancelOut] = field(default_factory=list)
    decisions: list[DecisionOut] = field(default_factory=list)  # agent id on the attempt
    released_slots: dict[str, int] = field(default_factory=dict)
    # Stored timers a change created (approval deadlines): the dispatcher wakes for them.
    timers: list[dt.datetime] = field(default_factory=list)
    # Attempts this change queued: the scheduler's in-memory ready queue learns them here.
    queued: list[ReadyEntry] = field(default_factory=list)
    # Hosted flow runners (decision 0018): frames for runners' agents, and whether a run now
    # wants a runner or a runner slot was freed (the dispatcher's runner pass runs).
    runner_frames: list[AssignRunnerOut | CancelRunnerOut] = field(default_factory=list)
    runners_wanted: bool = False

    def release(self, agent_id: str | None) -> None:
        if agent_id:
            self.released_slots[agent_id] = self.released_slots.get(agent_id, 0) + 1
            self.wake_scheduler = True

    def merge(self, other: Effects) -> None:
        self.touched_runs |= other.touched_runs
        self.wake_scheduler = self.wake_scheduler or other.wake_scheduler
        self.assigns.extend(other.assigns)
        self.cancels.extend(other.cancels)
        self.decisions.extend(other.decisions)
        self.timers.extend(other.timers)
        self.queued.extend(other.queued)
        self.runner_frames.extend(other.runner_frames)
        self.runners_wanted = self.runners_wanted or other.runners_wanted
        for agent_id, n in other.released_slots.items():
            self.released_slots[agent_id] = self.released_slots.get(agent_id, 0) + n
