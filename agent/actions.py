"""The agent's internal vocabulary for what the control plane tells it.

Every ``ControlFrame`` becomes exactly one ``Action`` value (docs/architecture.md,
"Conventions"); the conversion lives in ``agent.convert.action_from_proto`` so that nothing past
the edge sees a protobuf message. These are plain frozen dataclasses so the worker, runners and
tests can build and compare them freely.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from meridian.core.spec import StepSpec

Verdict = Literal["accept", "reject"]


@dataclass(frozen=True)
class Assignment:
    """One attempt the control plane hands to this agent, owned through ``fencing_token``."""

    attempt_id: str
    fencing_token: int
    flow_run_id: str
    step_run_id: str
    step_key: str
    attempt_number: int
    spec: StepSpec
    bundle_sha256: str = ""
    inputs_json: str = ""
    # The result references the inputs name (meridian.core.resultref JSON form), parsed by
    # the runner; it materializes exactly these before the step starts (agent.results.inputs).
    input_refs_json: tuple[str, ...] = ()


@dataclass(frozen=True)
class DecisionValue:
    """The control plane's answer to a runner's ProposeRunning."""

    attempt_id: str
    fencing_token: int
    verdict: Verdict
    reason: str = ""


@dataclass(frozen=True)
class Welcome:
    """First frame of every session: who we are and how the session behaves."""

    agent_id: str
    environment: str
    session_id: str
    heartbeat_interval_s: float
    lease_timeout_s: float
    last_applied_seq: int
    max_frame_bytes: int
    # Seconds until the certificate this stream uses should be rotated (0: no rotation).
    certificate_renew_in_s: float = 0.0
    # The labels the control plane routes this agent by (advertised + pinned by its token).
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class AssignAction:
    assignments: tuple[Assignment, ...]


@dataclass(frozen=True)
class CancelAction:
    attempt_id: str
    fencing_token: int
    reason: str
    grace_s: float


@dataclass(frozen=True)
class AckAction:
    up_to_seq: int


@dataclass(frozen=True)
class DrainAction:
    reason: str


@dataclass(frozen=True)
class DecisionAction:
    decisions: tuple[DecisionValue, ...]


@dataclass(frozen=True)
class CertificateAction:
    """The answer to a renewal: a new certificate, or a refusal and when to ask again."""

    certificate_pem: bytes
    renew_in_s: float
    refused: str = ""
    retry_in_s: float = 0.0


@dataclass(frozen=True)
class StoredObjectRef:
    """An object of one of this site's result stores, as the control plane names it."""

    store: str
    uri: str
    size: int = 0


@dataclass(frozen=True)
class SweepResultsAction:
    """List the result stores' run objects older than ``older_than_s``, in pages."""

    sweep_id: str
    older_than_s: float


@dataclass(frozen=True)
class DeleteResultsAction:
    """Delete these objects (their run was deleted or expired, or they are orphans)."""

    request_id: str
    objects: tuple[StoredObjectRef, ...]


@dataclass(frozen=True)
class ServeResultAction:
    """Push the bytes of a stored result of this site, from ``offset`` on, for a transfer
    the control plane relays to another environment (``agent.transfers``)."""

    transfer_id: str
    ref_json: str
    offset: int
    # The consumer accepts a presigned URL (a store with presign_transfers answers with one).
    presigned_url_allowed: bool = False


@dataclass(frozen=True)
class AssignRunnerAction:
    """Run a flow body here (decision 0018): ``meridian.flowexec`` with a run-scoped token."""

    flow_run_id: str
    runner_epoch: int
    bundle_sha256: str
    entrypoint: str
    runner_token: str
    client_address: str
    ca_certificate_pem: bytes

    def __repr__(self) -> str:  # never the token, in logs or tracebacks
        return f"AssignRunnerAction({self.flow_run_id!r}, epoch={self.runner_epoch})"


@dataclass(frozen=True)
class CancelRunnerAction:
    flow_run_id: str
    runner_epoch: int
    reason: str
    grace_s: float


@dataclass(frozen=True)
class UnknownAction:
    """A frame this agent version does not understand; logged and ignored, never fatal."""

    kind: str


Action = (
    Welcome
    | AssignAction
    | CancelAction
    | AckAction
    | DrainAction
    | DecisionAction
    | CertificateAction
    | SweepResultsAction
    | DeleteResultsAction
    | ServeResultAction
    | AssignRunnerAction
    | CancelRunnerAction
    | UnknownAction
)
