"""SQLAlchemy 2 models: current state on each row, history in ``events``.

Relationships are declared ``lazy="raise"`` so no query happens behind a handler's back; load
what you need explicitly in the repository functions.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from meridian.core.errorinfo import ErrorInfo
from meridian.core.kinds import ApprovalState
from meridian.core.spec import StepSpec
from meridian.core.states import AttemptState, RunState, StepState

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
AutoIncrementId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Stores naive UTC, returns aware UTC: SQLite keeps no time zone, PostgreSQL does."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use datetime.now(UTC)")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(
        self, value: dt.datetime | None, dialect: Dialect
    ) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class StepSpecJSON(TypeDecorator[StepSpec]):
    """A step run's spec: a JSON object in the table, a typed ``StepSpec`` in code."""

    impl = JSON()
    cache_ok = True

    def process_bind_param(self, value: StepSpec | None, dialect: Dialect) -> Any:
        return None if value is None else value.to_json()

    def process_result_value(self, value: Any, dialect: Dialect) -> StepSpec | None:
        return None if value is None else StepSpec.from_json(value)


class ErrorInfoJSON(TypeDecorator[ErrorInfo]):
    """Why something failed: a JSON object in the table, a typed ``ErrorInfo`` in code."""

    impl = JSON()
    cache_ok = True

    def process_bind_param(self, value: ErrorInfo | None, dialect: Dialect) -> Any:
        return None if value is None else value.to_json()

    def process_result_value(self, value: Any, dialect: Dialect) -> ErrorInfo | None:
        return None if value is None else ErrorInfo.from_json(value)


class StateColumn(TypeDecorator[Any]):
    """A state enum stored as its string value (VARCHAR(16), as the migrations create it).

    Binding a value that is not a member (a typo, another machine's state) fails before the
    write instead of storing something no reader understands.
    """

    impl = String(16)
    cache_ok = True

    def __init__(self, enum: type[StrEnum]) -> None:
        super().__init__()
        self.enum = enum

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        return None if value is None else self.enum(value).value

    def process_result_value(self, value: str | None, dialect: Dialect) -> Any:
        return None if value is None else self.enum(value)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dt.datetime: UTCDateTime(), dict[str, Any]: JSON(), list[Any]: JSON()}


class AgentRow(Base):
    __tablename__ = "agents"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    environment: Mapped[str] = mapped_column(String(253), index=True)
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Labels fixed by the join token: the agent cannot claim other values or other keys.
    pinned_labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    providers: Mapped[list[Any]] = mapped_column(default=list)
    capacity: Mapped[int] = mapped_column(default=0)
    version: Mapped[str] = mapped_column(String(64), default="")
    hostname: Mapped[str] = mapped_column(String(255), default="")
    # connected | disconnected | lost | draining
    status: Mapped[str] = mapped_column(String(16), default="disconnected")
    cert_fingerprint: Mapped[str] = mapped_column(String(64), default="")
    # The current certificate's lifetime, for the rotation schedule and its rate limit.
    cert_issued_at: Mapped[dt.datetime | None]
    cert_not_after: Mapped[dt.datetime | None]
    # The certificate rotation replaced: still accepted until it expires, so an agent that
    # crashed before saving its new certificate can reconnect and rotate again.
    previous_cert_fingerprint: Mapped[str] = mapped_column(String(64), default="")
    previous_cert_not_after: Mapped[dt.datetime | None]
    enrolled_at: Mapped[dt.datetime]
    connected_at: Mapped[dt.datetime | None]
    disconnected_at: Mapped[dt.datetime | None]
    last_heartbeat_at: Mapped[dt.datetime | None]
    # Highest report sequence number applied: the journal's exactly-once watermark.
    last_applied_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    # Revoked agents are refused at every connection; draining ones get no new work.
    revoked_at: Mapped[dt.datetime | None]
    drain_requested_at: Mapped[dt.datetime | None]


class JoinTokenRow(Base):
    __tablename__ = "join_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    secret_hash: Mapped[str] = mapped_column(String(128))
    environment: Mapped[str] = mapped_column(String(253))
    # Labels every agent enrolled with this token must carry, and the only ones it may.
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[dt.datetime]
    expires_at: Mapped[dt.datetime]
    used_at: Mapped[dt.datetime | None]
    used_by_agent_id: Mapped[str | None] = mapped_column(String(36))
    revoked_at: Mapped[dt.datetime | None]


class ApiTokenRow(Base):
    """Tokens people and automation present as ``authorization: Bearer mat_...``."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), default="")
    secret_hash: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))  # viewer | operator | admin | runner
    environments: Mapped[list[Any]] = mapped_column(default=list)  # empty = all
    flow_run_id: Mapped[str | None] = mapped_column(String(36))  # runner tokens only
    created_at: Mapped[dt.datetime]
    expires_at: Mapped[dt.datetime | None]
    last_used_at: Mapped[dt.datetime | None]
    revoked_at: Mapped[dt.datetime | None]


class BundleRow(Base):
    __tablename__ = "bundles"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime]


class FlowRunRow(Base):
    __tablename__ = "flow_runs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    flow_name: Mapped[str] = mapped_column(String(255), index=True)
    entrypoint: Mapped[str] = mapped_column(String(1024))
    trigger: Mapped[str] = mapped_column(String(64))
    parameters_json: Mapped[str] = mapped_column(Text)
    bundle_sha256: Mapped[str] = mapped_column(ForeignKey("bundles.sha256"))
    state: Mapped[RunState] = mapped_column(StateColumn(RunState), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(index=True)
    started_at: Mapped[dt.datetime | None]
    ended_at: Mapped[dt.datetime | None]
    result_json: Mapped[str | None] = mapped_column(Text)
    error: Mapped[ErrorInfo | None] = mapped_column(ErrorInfoJSON())
    # The flow runner's lease: a RUNNING run whose lease lapses becomes CRASHED.
    runner_lease_expires_at: Mapped[dt.datetime | None]
    resumed_at: Mapped[dt.datetime | None]
    retry_of: Mapped[str | None] = mapped_column(String(36))
    # The environment scope of the token that triggered the run (empty = not scoped): its
    # steps must target these environments and only tokens covering them see the run.
    scope: Mapped[list[Any]] = mapped_column(default=list)
    # Automated execution (issue 12). A deployment run records the version it ran and who or
    # what fired it; a subflow its parent and the call's key in it.
    deployment_id: Mapped[str | None] = mapped_column(String(36), index=True)
    deployment_version: Mapped[int | None]
    trigger_detail: Mapped[dict[str, Any] | None]
    parent_run_id: Mapped[str | None] = mapped_column(String(36), index=True)
    parent_key: Mapped[str | None] = mapped_column(String(512))
    # Hosted runners (decision 0018): a run that wants a runner on an agent matching
    # runner_target; each hand-out takes the next epoch (calls from older ones are refused).
    wants_runner: Mapped[bool] = mapped_column(default=False, index=True)
    runner_target: Mapped[str | None] = mapped_column(String(1024))
    runner_epoch: Mapped[int] = mapped_column(BigInteger, default=0)
    runner_agent_id: Mapped[str | None] = mapped_column(String(36))
    runner_resumes: Mapped[int] = mapped_column(default=0)
    on_runner_lost: Mapped[str | None] = mapped_column(String(16))
    max_runner_resumes: Mapped[int | None]
    # A scheduled run starts at its slot's nominal time plus jitter (a stored timer).
    start_after: Mapped[dt.datetime | None]


class StepRunRow(Base):
    __tablename__ = "step_runs"
    __table_args__ = (
        UniqueConstraint("flow_run_id", "key"),
        # Caching across runs: the newest completed run of a key in a scope.
        Index(
            "ix_step_runs_cache_key_cache_scope_ended_at", "cache_key", "cache_scope", "ended_at"
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    flow_run_id: Mapped[str] = mapped_column(ForeignKey("flow_runs.id"), index=True)
    key: Mapped[str] = mapped_column(String(512))
    name: Mapped[str] = mapped_column(String(255))
    spec: Mapped[StepSpec] = mapped_column(StepSpecJSON())
    inputs_json: Mapped[str] = mapped_column(Text)
    inputs_digest: Mapped[str] = mapped_column(String(64))
    state: Mapped[StepState] = mapped_column(StateColumn(StepState))
    result_json: Mapped[str | None] = mapped_column(Text)
    error: Mapped[ErrorInfo | None] = mapped_column(ErrorInfoJSON())
    created_at: Mapped[dt.datetime]
    ended_at: Mapped[dt.datetime | None]
    # Every (re)assignment of any attempt of this step takes the next token.
    last_fencing_token: Mapped[int] = mapped_column(BigInteger, default=0)
    # Caching across runs: the call's cache key (None = not cached) and its run's environment
    # scope (comma-joined, "" = unscoped): a result is reused only within the same scope.
    cache_key: Mapped[str | None] = mapped_column(String(128))
    cache_scope: Mapped[str | None] = mapped_column(String(1024))
    # A CACHED step run: the run and step key whose result it reused.
    cached_from_run_id: Mapped[str | None] = mapped_column(String(36))
    cached_from_step_key: Mapped[str | None] = mapped_column(String(512))
    # A result that stayed at its site (docs/results.md): its reference (resultref JSON form;
    # result_json is then None), and the reference's digest, indexed to check references
    # that later inputs name. input_refs_json: the JSON list of references the inputs name.
    result_ref_json: Mapped[str | None] = mapped_column(Text)
    result_ref_sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    input_refs_json: Mapped[str | None] = mapped_column(Text)


class AttemptRow(Base):
    __tablename__ = "attempts"
    __table_args__ = (
        UniqueConstraint("step_run_id", "number"),
        Index("ix_attempts_state_not_before", "state", "not_before"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    step_run_id: Mapped[str] = mapped_column(ForeignKey("step_runs.id"))
    flow_run_id: Mapped[str] = mapped_column(ForeignKey("flow_runs.id"), index=True)
    number: Mapped[int]
    state: Mapped[AttemptState] = mapped_column(StateColumn(AttemptState))
    agent_id: Mapped[str | None] = mapped_column(String(36), index=True)
    environment: Mapped[str | None] = mapped_column(String(253))
    provider: Mapped[str] = mapped_column(String(64))
    resource_id: Mapped[str | None] = mapped_column(String(512))
    handle_json: Mapped[str | None] = mapped_column(Text)
    fencing_token: Mapped[int] = mapped_column(BigInteger, default=0)
    # Stored timers: nothing about scheduling lives only in memory.
    queued_at: Mapped[dt.datetime]
    not_before: Mapped[dt.datetime]
    schedule_deadline: Mapped[dt.datetime]
    assigned_at: Mapped[dt.datetime | None]
    started_at: Mapped[dt.datetime | None]
    ended_at: Mapped[dt.datetime | None]
    exit_code: Mapped[int | None]
    error: Mapped[ErrorInfo | None] = mapped_column(ErrorInfoJSON())


class ApprovalRow(Base):
    """A human approval asked for by a flow body (``meridian.approve``), keyed like a step.

    ``deadline`` is a stored timer (like ``attempts.schedule_deadline``): the dispatcher times
    the approval out even when its runner is gone or the control plane restarted meanwhile.
    ``asked_at`` is the last time a runner asked for it: after a resume, only approvals the
    new runner asked for again keep the run PAUSED.
    """

    __tablename__ = "approvals"
    __table_args__ = (
        UniqueConstraint("flow_run_id", "key"),
        Index("ix_approvals_state_deadline", "state", "deadline"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    flow_run_id: Mapped[str] = mapped_column(ForeignKey("flow_runs.id"), index=True)
    key: Mapped[str] = mapped_column(String(512))
    message: Mapped[str] = mapped_column(Text, default="")
    state: Mapped[ApprovalState] = mapped_column(StateColumn(ApprovalState))
    requested_at: Mapped[dt.datetime]
    asked_at: Mapped[dt.datetime]
    deadline: Mapped[dt.datetime | None]
    decided_at: Mapped[dt.datetime | None]
    decided_by: Mapped[str] = mapped_column(String(128), default="")
    reason: Mapped[str] = mapped_column(Text, default="")


class EventRow(Base):
    __tablename__ = "events"
    __table_args__ = (Index("ix_events_flow_run_id_id", "flow_run_id", "id"),)

    id: Mapped[int] = mapped_column(AutoIncrementId, primary_key=True, autoincrement=True)
    flow_run_id: Mapped[str | None] = mapped_column(String(36))
    step_run_id: Mapped[str | None] = mapped_column(String(36))
    attempt_id: Mapped[str | None] = mapped_column(String(36))
    step_key: Mapped[str | None] = mapped_column(String(512))
    kind: Mapped[str] = mapped_column(String(64))
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str | None] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text, default="")
    details: Mapped[dict[str, Any] | None]
    created_at: Mapped[dt.datetime]


class LogRow(Base):
    __tablename__ = "logs"
    __table_args__ = (Index("ix_logs_flow_run_id_id", "flow_run_id", "id"),)

    id: Mapped[int] = mapped_column(AutoIncrementId, primary_key=True, autoincrement=True)
    flow_run_id: Mapped[str] = mapped_column(String(36))
    step_run_id: Mapped[str] = mapped_column(String(36))
    attempt_id: Mapped[str] = mapped_column(String(36))
    step_key: Mapped[str] = mapped_column(String(512))
    attempt_number: Mapped[int]
    stream: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text)
    at: Mapped[dt.datetime]


class AuditRecordRow(Base):
    """One link of the hash-chained audit log (see ``control_plane.audit``).

    Rows are only ever inserted. ``id`` is assigned by the appender as the previous id + 1
    under the chain lock instead of by a sequence: sequences skip values when a transaction
    rolls back, and a gap must mean "a record was removed". ``details`` is canonical JSON text,
    stored verbatim so the hash covers exactly the bytes kept.
    """

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(AutoIncrementId, primary_key=True, autoincrement=False)
    at: Mapped[dt.datetime] = mapped_column(index=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(255))
    details: Mapped[str] = mapped_column(Text)
    # Unique: two records can never claim the same predecessor, so even a broken lock could
    # not fork the chain silently (the second insert fails instead).
    prev_hash: Mapped[str] = mapped_column(String(64), unique=True)
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class EnvironmentRow(Base):
    """Control-plane policy of one environment: its data residency rule (docs/results.md).

    A row exists only once an admin set something; an environment without one has no rule.
    """

    __tablename__ = "environments"

    name: Mapped[str] = mapped_column(String(253), primary_key=True)
    residency: Mapped[str] = mapped_column(String(1024), default="")
    # The rule counts only labels join tokens pinned (an agent cannot claim those).
    residency_pinned_only: Mapped[bool] = mapped_column(default=False)
    updated_at: Mapped[dt.datetime]
    updated_by: Mapped[str] = mapped_column(String(128), default="")


class TransferRow(Base):
    """One movement of a stored result out of its environment (to an agent or a client)."""

    __tablename__ = "transfers"
    __table_args__ = (Index("ix_transfers_started_at", "started_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    flow_run_id: Mapped[str] = mapped_column(String(36), index=True)
    step_key: Mapped[str] = mapped_column(String(512), default="")
    attempt_id: Mapped[str | None] = mapped_column(String(36))
    from_environment: Mapped[str] = mapped_column(String(253))
    to_environment: Mapped[str] = mapped_column(String(253), default="")
    store: Mapped[str] = mapped_column(String(63))
    uri: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    state: Mapped[str] = mapped_column(String(16))
    error: Mapped[str] = mapped_column(Text, default="")
    producer_run_id: Mapped[str] = mapped_column(String(36), default="")
    producer_step_key: Mapped[str] = mapped_column(String(512), default="")
    # Who asked: the consuming agent's id, or the API principal of a client download.
    requested_by: Mapped[str] = mapped_column(String(128), default="")
    # How the bytes moved: "relay" (through this control plane) or "presigned" (the consumer
    # downloaded from a URL the producing site signed; the URL itself is never stored).
    method: Mapped[str] = mapped_column(String(16), default="relay")
    started_at: Mapped[dt.datetime]
    ended_at: Mapped[dt.datetime | None]


class ResultDeletionRow(Base):
    """A stored result object to delete at its site (its run was deleted or expired, or it
    is an orphan): kept until an agent of the environment confirms, so none is forgotten."""

    __tablename__ = "result_deletions"
    __table_args__ = (Index("ix_result_deletions_environment", "environment"),)

    id: Mapped[int] = mapped_column(AutoIncrementId, primary_key=True, autoincrement=True)
    environment: Mapped[str] = mapped_column(String(253))
    store: Mapped[str] = mapped_column(String(63))
    uri: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    reason: Mapped[str] = mapped_column(String(64))
    flow_run_id: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[dt.datetime]
    sent_at: Mapped[dt.datetime | None]
    tries: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str] = mapped_column(Text, default="")


class DeploymentRow(Base):
    """A named deployment; its definitions are versions (``DeploymentVersionRow``)."""

    __tablename__ = "deployments"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    current_version: Mapped[int]
    paused: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[dt.datetime]
    updated_at: Mapped[dt.datetime]
    deleted_at: Mapped[dt.datetime | None]


class DeploymentVersionRow(Base):
    """One deploy: the whole spec as sent (control.proto DeploymentSpec as JSON), immutable."""

    __tablename__ = "deployment_versions"

    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id"), primary_key=True)
    version: Mapped[int] = mapped_column(primary_key=True)
    spec: Mapped[dict[str, Any]]
    bundle_sha256: Mapped[str] = mapped_column(ForeignKey("bundles.sha256"))
    created_at: Mapped[dt.datetime]
    created_by: Mapped[str] = mapped_column(String(128), default="")


class ScheduleRow(Base):
    """A schedule of a deployment with its cursor (decision 0019)."""

    __tablename__ = "schedules"
    __table_args__ = (Index("ix_schedules_active_next_fire_at", "active", "next_fire_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id"), index=True)
    definition: Mapped[dict[str, Any]]
    parameters: Mapped[dict[str, Any]]
    catch_up: Mapped[dict[str, Any]]
    jitter_s: Mapped[float] = mapped_column(Float(), default=0.0)
    paused: Mapped[bool] = mapped_column(default=False)
    # Not paused, deployment not paused or deleted, schedule still in the current version.
    active: Mapped[bool] = mapped_column(default=True)
    evaluated_through: Mapped[dt.datetime]
    next_fire_at: Mapped[dt.datetime | None]


class ScheduleFireRow(Base):
    """One fired slot: the unique key that makes a slot fire exactly once (decision 0019)."""

    __tablename__ = "schedule_fires"

    deployment_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    slot_key: Mapped[str] = mapped_column(String(128), primary_key=True)
    schedule_id: Mapped[str] = mapped_column(String(36))
    nominal_at: Mapped[dt.datetime]
    flow_run_id: Mapped[str | None] = mapped_column(String(36))
    reason: Mapped[str] = mapped_column(Text, default="")
    fired_at: Mapped[dt.datetime]


class TriggerKeyRow(Base):
    """An idempotency key of a trigger (API, webhook, outcome): a repeat finds its run."""

    __tablename__ = "trigger_keys"

    deployment_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    flow_run_id: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[dt.datetime] = mapped_column(index=True)


class WebhookRow(Base):
    """A webhook token of a deployment: only its hash is kept."""

    __tablename__ = "webhooks"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime]
    created_by: Mapped[str] = mapped_column(String(128), default="")
    revoked_at: Mapped[dt.datetime | None]


class ConcurrencyLimitRow(Base):
    """A named global concurrency limit (``meridian limits set NAME N``)."""

    __tablename__ = "concurrency_limits"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    limit: Mapped[int]
    updated_at: Mapped[dt.datetime]


class LimitSlotRow(Base):
    """Who holds or waits for a slot of a limit (a named limit, or ``deployment:<id>``).

    One row per (limit, holder): the primary key is what keeps the count exact. A holder has
    a lease (``expires_at``); a waiter has none yet (``expires_at`` None) and keeps its place
    by ``requested_at`` then ``seq``.
    """

    __tablename__ = "limit_slots"

    limit_name: Mapped[str] = mapped_column(String(160), primary_key=True)
    holder_id: Mapped[str] = mapped_column(String(160), primary_key=True)
    requested_at: Mapped[dt.datetime]
    seq: Mapped[int] = mapped_column(BigInteger, default=0)
    acquired_at: Mapped[dt.datetime | None]
    expires_at: Mapped[dt.datetime | None]
