"""Plain values for everything the control API sends or receives.

These frozen dataclasses mirror the messages of ``protos/meridian/v1/control.proto`` and
``common.proto`` with the same field names, so code outside the client (``meridian/client.py``
and its helper modules) and ``meridian/_convert.py`` never touches generated protobuf classes.
Two deliberate differences:
``*_unix_ms`` integers become timezone-aware ``datetime`` values (``None`` when unset) named
without the suffix, and an empty ``ErrorInfo`` becomes ``None``. Repeated fields are tuples so
the values stay hashable and immutable.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

# The shared vocabulary, re-exported: SDK code names them as ``models.ErrorInfo`` too.
from meridian.core.errorinfo import ErrorInfo as ErrorInfo
from meridian.core.spec import StepSpec as StepSpec


@dataclass(frozen=True)
class StepSubmission:
    """One step call of a flow run: deterministic key, spec and JSON inputs."""

    key: str
    spec: StepSpec
    inputs_json: str
    # Caching across runs (meridian.core.cachekey): "" = not cached; 0 = no expiration.
    cache_key: str = ""
    cache_expires_after_s: float = 0.0
    # The result references the inputs name (ResultRef JSON), listed outside the possibly
    # sealed inputs so the control plane can check them (docs/results.md).
    input_refs_json: tuple[str, ...] = ()


@dataclass(frozen=True)
class SubmittedStep:
    """The control plane's answer for one submission."""

    key: str
    step_run_id: str
    state: str
    existing: bool = False
    outcome: StepOutcome | None = None  # set when the step run had already ended
    outcome_omitted: bool = False  # it had ended, but the answer had no room: submit again


@dataclass(frozen=True)
class StepOutcome:
    """The terminal state of a step run, delivered inside a ``RunUpdate``."""

    step_run_id: str
    key: str
    state: str
    result_json: str = ""
    error: ErrorInfo | None = None
    # Set instead of result_json when the result stayed at its site: its ResultRef JSON.
    result_ref_json: str = ""


@dataclass(frozen=True)
class FetchedResult:
    """A stored result downloaded through the control plane: where, and what was checked."""

    path: Path
    size: int
    sha256: str


@dataclass(frozen=True)
class ApprovalInfo:
    """A human approval a flow body asked for (``meridian.approve``), and its decision."""

    flow_run_id: str
    key: str
    state: str  # pending | approved | rejected | timed_out
    message: str = ""
    requested_at: datetime | None = None
    decided_at: datetime | None = None
    decided_by: str = ""  # the audit actor, e.g. "token:<id>"; "system" for a timeout
    reason: str = ""
    deadline: datetime | None = None  # when it times out; None = never

    @property
    def decided(self) -> bool:
        return self.state != "pending"


@dataclass(frozen=True)
class ApprovalState:
    """The answer of ``RequestApproval`` / ``DecideApproval``."""

    approval: ApprovalInfo
    run_state: str


@dataclass(frozen=True)
class RunUpdate:
    """One event of a run's history as streamed by ``WatchRun``."""

    event_id: int
    at: datetime | None
    kind: str
    step_key: str = ""
    step_run_id: str = ""
    attempt_id: str = ""
    message: str = ""
    state: str = ""
    step_outcome: StepOutcome | None = None
    run_state: str = ""
    approval: ApprovalInfo | None = None  # set on "approval.*" events
    environment: str = ""  # set on "attempt.assigned" events


@dataclass(frozen=True)
class AttemptDetail:
    """One try of a step run on one agent: where, when, and how it ended."""

    attempt_id: str
    number: int
    state: str
    environment: str = ""
    agent_id: str = ""
    agent_name: str = ""
    provider: str = ""
    resource_id: str = ""
    fencing_token: int = 0
    queued_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    error: ErrorInfo | None = None
    exit_code: int = 0
    recovered: bool = False


@dataclass(frozen=True)
class StepRunDetail:
    """One logical step call of a run with all its attempts."""

    step_run_id: str
    key: str
    name: str
    state: str
    target: str = ""
    provider: str = ""
    inputs_digest: str = ""
    result_json: str = ""
    error: ErrorInfo | None = None
    created_at: datetime | None = None
    ended_at: datetime | None = None
    attempts: tuple[AttemptDetail, ...] = ()
    # A CACHED step: the run and step key whose result it reused (caching across runs).
    reused_from_run_id: str = ""
    reused_from_step_key: str = ""
    result_ref_json: str = ""  # set instead of result_json when the result stayed at its site


@dataclass(frozen=True)
class RunEvent:
    """An immutable record of one state change of a run."""

    event_id: int
    at: datetime | None
    kind: str
    step_key: str = ""
    attempt_id: str = ""
    from_state: str = ""
    to_state: str = ""
    message: str = ""


@dataclass(frozen=True)
class RunDetail:
    """Everything recorded about one flow run."""

    flow_run_id: str
    flow_name: str
    entrypoint: str
    trigger: str
    parameters_json: str
    bundle_sha256: str
    state: str
    created_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    result_json: str = ""
    error: ErrorInfo | None = None
    steps: tuple[StepRunDetail, ...] = ()
    events: tuple[RunEvent, ...] = ()
    retry_of: str = ""  # the run this one retries
    resumed_at: datetime | None = None  # last time the run was resumed
    approvals: tuple[ApprovalInfo, ...] = ()
    transfers: tuple[TransferInfo, ...] = ()  # stored results that crossed environments
    parent_run_id: str = ""  # a subflow's parent run, and its call's key there
    parent_key: str = ""
    children: tuple[RunSummary, ...] = ()  # subflows started from this run, oldest first
    waiting_for: str = ""  # why a run that has not started waits (runner, limit, start time)


@dataclass(frozen=True)
class TransferInfo:
    """One movement of a stored result out of its environment (to_environment "": a client
    download)."""

    transfer_id: str
    flow_run_id: str  # the consumer's run
    step_key: str  # the consumer step ("" for a client download of a run's result)
    from_environment: str
    to_environment: str
    store: str
    bytes: int  # bytes that crossed
    sha256: str
    state: str  # RUNNING | COMPLETED | FAILED
    attempt_id: str = ""
    error: str = ""
    started_at: datetime | None = None
    ended_at: datetime | None = None
    producer_run_id: str = ""
    producer_step_key: str = ""
    method: str = "relay"  # relay | presigned (downloaded from a URL the site signed)


@dataclass(frozen=True)
class TransferTotal:
    """Bytes of the completed transfers from one environment to another."""

    from_environment: str
    to_environment: str
    bytes: int
    transfers: int


@dataclass(frozen=True)
class TransferListing:
    transfers: tuple[TransferInfo, ...] = ()  # newest first
    totals: tuple[TransferTotal, ...] = ()


@dataclass(frozen=True)
class RunSummary:
    """One row of ``ListRuns``."""

    flow_run_id: str
    flow_name: str
    state: str
    created_at: datetime | None = None
    ended_at: datetime | None = None
    steps_total: int = 0
    steps_failed: int = 0
    parent_run_id: str = ""  # a subflow's parent run
    trigger: str = ""


@dataclass(frozen=True)
class LogLine:
    """One line of step output."""

    at: datetime | None
    stream: str
    text: str


@dataclass(frozen=True)
class StepLogLine:
    """A log line with the step run and attempt it belongs to."""

    id: int
    step_key: str
    attempt_number: int
    line: LogLine


@dataclass(frozen=True)
class LogPage:
    """A page of ``GetLogs``; pass ``next_after_id`` back to continue."""

    lines: tuple[StepLogLine, ...]
    next_after_id: int


@dataclass(frozen=True)
class AgentInfo:
    """An agent as the control plane knows it."""

    agent_id: str
    name: str
    environment: str
    labels: Mapping[str, str] = field(default_factory=dict)
    providers: tuple[str, ...] = ()
    capacity: int = 0
    in_use: int = 0
    version: str = ""
    last_heartbeat: datetime | None = None
    status: str = ""
    hostname: str = ""
    cert_fingerprint: str = ""
    cert_not_after: datetime | None = None
    degraded: str = ""  # why the agent takes no new work (e.g. "disk_full"); "" when healthy
    loop_stall_ms: int = 0  # the longest event-loop stall it reported recently (0: none)


@dataclass(frozen=True)
class EnvironmentInfo:
    """An environment: its data residency rule, its agents and the result stores they have."""

    name: str
    residency: str = ""  # "" = no rule
    agents: int = 0  # enrolled, not revoked
    connected: int = 0
    result_stores: tuple[str, ...] = ()  # advertised by its connected agents
    default_result_store: str = ""
    # The rule counts only labels agents' join tokens pinned, never labels an agent claims.
    residency_pinned_labels_only: bool = False


@dataclass(frozen=True)
class RunToExecute:
    """What a runner needs to resume or retry a run's flow body."""

    flow_run_id: str
    flow_name: str
    entrypoint: str
    parameters_json: str
    bundle_sha256: str
    state: str
    watch_after_event_id: int = 0
    runner_token: str = ""  # may drive this run only; the runner calls with it
    hosted: bool = False  # a hosted runner executes it: follow it, do not run its body


@dataclass(frozen=True)
class CancelResult:
    flow_run_id: str
    state: str  # CANCELLING until every attempt confirmed, then CANCELLED
    attempts_to_confirm: int


@dataclass(frozen=True)
class RunDeletion:
    flow_run_id: str
    stored_objects: int  # result objects queued for deletion at their sites


@dataclass(frozen=True)
class StoreSweep:
    """What a garbage collection found in one store ("" = the environment as a whole)."""

    environment: str
    store: str
    objects: int  # listed (older than the collection's age)
    orphans: int  # of them, referred to by no run
    orphan_bytes: int
    deleted: int  # 0 on a dry run
    errors: tuple[str, ...] = ()


@dataclass(frozen=True)
class CollectResult:
    sweeps: tuple[StoreSweep, ...] = ()
    skipped: tuple[str, ...] = ()  # environments not swept, each with why


@dataclass(frozen=True)
class AuditRecord:
    """One record of the control plane's hash-chained audit log (docs/audit.md).

    ``details_json`` is kept as the exact canonical text that was hashed; ``details`` is the
    same content parsed.
    """

    id: int
    at: datetime
    actor: str
    action: str
    subject: str
    details_json: str
    prev_hash: str
    hash: str

    @property
    def details(self) -> dict[str, Any]:
        value = json.loads(self.details_json or "{}")
        return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class AuditVerification:
    """The answer of ``VerifyAudit``: intact or not, the first bad record, the head to anchor."""

    ok: bool
    records: int
    head_id: int
    head_hash: str
    first_bad_id: int | None = None
    problem: str = ""


@dataclass(frozen=True)
class CreatedWebhook:
    """A new webhook token (``CreateWebhook``): the token is shown this once, never again."""

    webhook_id: str
    token: str
    url_path: str  # POST here on the web listener with "Authorization: Bearer <token>"


@dataclass(frozen=True)
class WebhookInfo:
    """A deployment's webhook (``ListWebhooks``/``RevokeWebhook``): never its token."""

    webhook_id: str
    deployment: str
    name: str
    created_at: datetime | None
    created_by: str
    revoked_at: datetime | None  # None while it is live
