"""``ControlClient``: the synchronous gRPC client of the control API (control.proto).

It owns the TLS channel, per-call deadlines and bundle chunking. gRPC failures become
``meridian.core.errors`` in ``meridian.rpcerrors``, the ``WatchRun`` streams are in
``meridian.clientstreams``, result downloads in ``meridian.resultdownload`` (their names are
re-exported here, where callers and tests import them from); messages are converted by
``meridian._convert``.
"""

from __future__ import annotations

import copy
import json
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TypeVar

import grpc

from meridian import _convert, _deployments, _limits, models
from meridian.clientstreams import RunBatchStream as RunBatchStream
from meridian.clientstreams import RunUpdateStream as RunUpdateStream
from meridian.core import convert as core_convert
from meridian.core.errors import BundleError, MeridianError, ValidationError
from meridian.core.resultref import ResultRef
from meridian.resultdownload import _SHA256 as _SHA256
from meridian.resultdownload import _ResultDownload as _ResultDownload
from meridian.rpcerrors import _TLS_HINTS as _TLS_HINTS
from meridian.rpcerrors import _code as _code
from meridian.rpcerrors import _connection_error as _connection_error
from meridian.rpcerrors import _details as _details
from meridian.rpcerrors import map_rpc_error as map_rpc_error
from protos.meridian.v1 import common_pb2, control_pb2, control_pb2_grpc

# How long idempotent calls keep retrying while the control plane restarts.
RESTART_TOLERANCE_S = 60.0

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
UPLOAD_CHUNK_BYTES = 1024 * 1024
# Uploads get extra deadline per MiB so a large bundle on a slow link is not cut off by the
# deadline meant for small calls (assumes at least ~1 MiB/s).
_UPLOAD_SECONDS_PER_MIB = 1.0

_T = TypeVar("_T")
# Verifying rereads the whole log: give it longer than an ordinary call.
_VERIFY_TIMEOUT_S = 300.0
# A garbage collection's sweeps take up to the server's call budget (60 s by default).
_COLLECT_TIMEOUT_S = 90.0


class BundleLike(Protocol):
    """What the client needs of ``meridian.core.bundle.Bundle``."""

    @property
    def sha256(self) -> str: ...

    @property
    def data(self) -> bytes: ...


def _read_ca(ca_file: Path | str) -> bytes:
    path = Path(ca_file)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValidationError(
            f"cannot read the CA file {path}: {exc.strerror or exc} "
            "(check --ca-file / MERIDIAN_CA_FILE)"
        ) from exc
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise ValidationError(f"the CA file {path} does not contain a PEM certificate")
    return data


class ControlClient:
    """Talks to one control plane over TLS, trusting the CA certificate in ``ca_file``.

    Args:
        address: "host:port" of the control plane.
        ca_file: PEM file of the CA that signed the control plane's certificate.
        timeout_s: deadline of every unary call (``watch_run`` has none).
    """

    def __init__(
        self,
        address: str,
        ca_file: Path | str,
        *,
        timeout_s: float = 30.0,
        token: str | None = None,
    ) -> None:
        self.address = address
        self.ca_file = Path(ca_file)
        self.timeout_s = timeout_s
        # Sent as `authorization: Bearer ...` on every call (docs/security.md).
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token.strip()}"),) if token else ()
        )
        self._reached = False  # set after the first answer: later UNAVAILABLE = restarting
        # CreateRun answers with a token that may drive that run only; the runner uses it.
        self.runner_tokens: dict[str, str] = {}
        credentials = grpc.ssl_channel_credentials(root_certificates=_read_ca(ca_file))
        options = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ]
        self._channel = grpc.secure_channel(address, credentials, options=options)
        self._stub = control_pb2_grpc.ControlServiceStub(self._channel)

    def with_token(self, token: str) -> ControlClient:
        """The same connection, calling with another API token (e.g. a run's runner token)."""
        other = copy.copy(self)
        other._metadata = (("authorization", f"Bearer {token.strip()}"),)
        return other

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- bundles -----------------------------------------------------------------------------

    def _bundle_status(self, sha256: str) -> control_pb2.HasBundleResponse:
        request = control_pb2.HasBundleRequest(sha256=sha256)
        return self._call(self._stub.HasBundle, request)

    def has_bundle(self, sha256: str) -> bool:
        return self._bundle_status(sha256).present

    def upload_bundle(self, bundle: BundleLike) -> None:
        data = bundle.data
        mib = len(data) / (1024 * 1024)
        timeout = self.timeout_s + mib * _UPLOAD_SECONDS_PER_MIB
        self._call(self._stub.UploadBundle, _chunks(bundle.sha256, data), timeout=timeout)

    def ensure_bundle(self, bundle: BundleLike) -> None:
        """Upload the bundle unless the control plane already has this content hash."""
        status = self._bundle_status(bundle.sha256)
        if status.present:
            return
        if status.max_size and len(bundle.data) > status.max_size:
            raise BundleError(
                f"the code bundle is {len(bundle.data)} bytes but the control plane accepts "
                f"at most {status.max_size}; exclude large files with .meridianignore"
            )
        self.upload_bundle(bundle)

    # -- runs --------------------------------------------------------------------------------

    def create_run(
        self,
        flow_name: str,
        entrypoint: str,
        parameters: Mapping[str, Any],
        bundle_sha256: str,
        trigger: str = "manual",
        *,
        runner_target: str = "",
        parent_run_id: str = "",
        parent_key: str = "",
        concurrency: Sequence[str] = (),
    ) -> str:
        """Create a run; ``trigger="remote"`` makes it wait for a hosted flow runner on an
        agent matching ``runner_target`` (decision 0018) instead of running here. With
        ``parent_run_id`` (a runner token of that run) it is the subflow ``parent_key`` of
        that run: asked again, the same child comes back (``bundle_sha256`` "": the
        parent's code)."""
        request = control_pb2.CreateRunRequest(
            flow_name=flow_name,
            entrypoint=entrypoint,
            parameters_json=json.dumps(dict(parameters)),
            bundle_sha256=bundle_sha256,
            trigger=trigger,
            runner_target=runner_target,
            parent_run_id=parent_run_id,
            parent_key=parent_key,
            concurrency=list(concurrency),  # @flow(concurrency=...): held for the whole run
        )
        answer = self._call(self._stub.CreateRun, request, idempotent=bool(parent_key))
        self.runner_tokens[answer.flow_run_id] = answer.runner_token
        return answer.flow_run_id

    def submit_steps(
        self, flow_run_id: str, submissions: Sequence[models.StepSubmission]
    ) -> list[models.SubmittedStep]:
        """Submit step calls in one request; the answers come back in the same order.

        Consecutive calls sharing one spec object (a ``map``) travel as one batch with the
        spec once. Retried while the control plane restarts: it is idempotent on the keys.
        """
        request = _convert.submit_request(flow_run_id, submissions)
        response = self._call(self._stub.SubmitSteps, request, idempotent=True)
        answers = _convert.submit_answers(request, response)
        return [answers[s.key] for s in submissions]

    def watch_run(self, flow_run_id: str, after_event_id: int = 0) -> RunUpdateStream:
        """Stream the run's updates after ``after_event_id``, one at a time; ends when the
        run is terminal."""
        return RunUpdateStream(self.watch_run_batches(flow_run_id, after_event_id))

    def watch_run_batches(self, flow_run_id: str, after_event_id: int = 0) -> RunBatchStream:
        """Stream the run's updates after ``after_event_id`` as the server batches them
        (lists in event order); ends when the run is terminal."""
        request = control_pb2.WatchRunRequest(
            flow_run_id=flow_run_id, after_event_id=after_event_id, batched=True
        )
        try:
            call = self._stub.WatchRun(request, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise self._map_error(exc) from None
        return RunBatchStream(call, self)

    def finish_run(
        self,
        flow_run_id: str,
        succeeded: bool,
        result_json: str = "",
        error: models.ErrorInfo | None = None,
    ) -> str:
        request = control_pb2.FinishRunRequest(
            flow_run_id=flow_run_id,
            succeeded=succeeded,
            result_json=result_json,
            error=core_convert.error_to_proto(error),
        )
        return self._call(self._stub.FinishRun, request, idempotent=True).state

    # -- reading -----------------------------------------------------------------------------

    def get_run(self, run_id_or_prefix: str) -> models.RunDetail:
        request = control_pb2.GetRunRequest(flow_run_id=run_id_or_prefix)
        return _convert.run_detail_from_proto(
            self._call(self._stub.GetRun, request, idempotent=True)
        )

    def list_runs(
        self, limit: int = 50, state: str = "", flow_name: str = ""
    ) -> list[models.RunSummary]:
        request = control_pb2.ListRunsRequest(limit=limit, state=state, flow_name=flow_name)
        response = self._call(self._stub.ListRuns, request, idempotent=True)
        return [_convert.run_summary_from_proto(r) for r in response.runs]

    def get_logs(
        self, run_id: str, step_key: str = "", after_id: int = 0, limit: int = 10000
    ) -> models.LogPage:
        request = control_pb2.GetLogsRequest(
            flow_run_id=run_id, step_key=step_key, after_id=after_id, limit=limit
        )
        return _convert.log_page_from_proto(
            self._call(self._stub.GetLogs, request, idempotent=True)
        )

    # -- resilience --------------------------------------------------------------------------

    def renew_runner_lease(self, flow_run_id: str, lease_s: float) -> str:
        """Keep the run's runner lease alive; returns the run's state."""
        request = control_pb2.RenewRunnerLeaseRequest(flow_run_id=flow_run_id, lease_s=lease_s)
        return self._call(self._stub.RenewRunnerLease, request, idempotent=True).state

    def cancel_run(self, run_id_or_prefix: str, reason: str = "") -> models.CancelResult:
        request = control_pb2.CancelRunRequest(flow_run_id=run_id_or_prefix, reason=reason)
        answer = self._call(self._stub.CancelRun, request, idempotent=True)
        return models.CancelResult(answer.flow_run_id, answer.state, answer.attempts_to_confirm)

    def resume_run(self, run_id_or_prefix: str, *, here: bool = False) -> models.RunToExecute:
        """Reopen a run. A hosted run goes back to a hosted runner (``hosted`` in the answer:
        do not run its body) unless ``here``: the caller runs it with the answer's token."""
        request = control_pb2.ResumeRunRequest(flow_run_id=run_id_or_prefix, here=here)
        return _convert.run_to_execute_from_proto(self._call(self._stub.ResumeRun, request))

    def retry_run(self, run_id_or_prefix: str, *, here: bool = False) -> models.RunToExecute:
        """A new run of the same flow version and parameters (hosted like the original
        unless ``here``)."""
        request = control_pb2.RetryRunRequest(flow_run_id=run_id_or_prefix, here=here)
        return _convert.run_to_execute_from_proto(self._call(self._stub.RetryRun, request))

    # -- approvals ---------------------------------------------------------------------------

    def request_approval(
        self, flow_run_id: str, key: str, message: str = "", timeout_s: float = 0.0
    ) -> models.ApprovalState:
        """Ask for approval ``key`` of a run (idempotent on the key); the run is PAUSED
        until it is decided. ``timeout_s`` 0 = no timeout."""
        request = control_pb2.RequestApprovalRequest(
            flow_run_id=flow_run_id, key=key, message=message, timeout_s=timeout_s
        )
        answer = self._call(self._stub.RequestApproval, request, idempotent=True)
        return _convert.approval_state_from_proto(answer)

    def decide_approval(
        self, run_id_or_prefix: str, key: str, approve: bool, reason: str = ""
    ) -> models.ApprovalState:
        """Approve or reject a pending approval; repeating the same decision is a no-op."""
        request = control_pb2.DecideApprovalRequest(
            flow_run_id=run_id_or_prefix, key=key, approve=approve, reason=reason
        )
        answer = self._call(self._stub.DecideApproval, request, idempotent=True)
        return _convert.approval_state_from_proto(answer)

    def download_bundle(self, sha256: str) -> bytes:
        """The code bundle of a run (to resume or retry it here)."""
        request = control_pb2.DownloadBundleRequest(sha256=sha256)
        try:
            chunks = [
                c.data
                for c in self._stub.DownloadBundle(
                    request, timeout=self.timeout_s * 4, metadata=self._metadata
                )
            ]
        except grpc.RpcError as exc:
            raise self._map_error(exc) from None
        return b"".join(chunks)

    def fetch_result(
        self,
        flow_run_id: str,
        step_key: str,
        dest: Path | str,
        *,
        expected: ResultRef | None = None,
    ) -> models.FetchedResult:
        """Download the stored result of a step (``ControlService.FetchResult``) to ``dest``.

        The bytes stream to ``DEST.part`` and are renamed to ``dest`` only when their size
        and sha256 match what the stream announced (and ``expected``, when given): nothing
        partial or wrong is left at ``dest``. A stream cut while the control plane restarts
        is resumed from the bytes already received.

        Raises:
            NotFound: no such run or step, or the step has no stored result.
            PermissionDenied: e.g. a residency rule forbids downloads of the producing
                environment.
            ConflictError: the bytes did not match, or the site could not serve them.
        """
        return _ResultDownload(self, flow_run_id, step_key, Path(dest), expected).run()

    def revoke_agent(self, agent: str, reason: str = "") -> models.AgentInfo:
        request = control_pb2.AgentRequest(agent=agent, reason=reason)
        return _convert.agent_from_proto(self._call(self._stub.RevokeAgent, request))

    def drain_agent(self, agent: str, reason: str = "") -> models.AgentInfo:
        request = control_pb2.AgentRequest(agent=agent, reason=reason)
        return _convert.agent_from_proto(self._call(self._stub.DrainAgent, request))

    def list_agents(self) -> list[models.AgentInfo]:
        response = self._call(
            self._stub.ListAgents, control_pb2.ListAgentsRequest(), idempotent=True
        )
        return [_convert.agent_from_proto(a) for a in response.agents]

    # -- environments ------------------------------------------------------------------------

    def list_environments(self) -> list[models.EnvironmentInfo]:
        """Every environment with agents or a residency rule (viewers)."""
        response = self._call(
            self._stub.ListEnvironments, control_pb2.ListEnvironmentsRequest(), idempotent=True
        )
        return [_convert.environment_from_proto(e) for e in response.environments]

    def set_residency(
        self, environment: str, rule: str, reason: str = "", *, pinned_labels_only: bool = False
    ) -> models.EnvironmentInfo:
        """Set ``environment``'s data residency rule (a label selector; "" removes it). Admins
        only; audited with ``reason``. It applies to steps queued from then on.
        ``pinned_labels_only``: the rule counts only the labels agents' join tokens pinned."""
        request = control_pb2.SetResidencyRequest(
            environment=environment,
            rule=rule,
            reason=reason,
            pinned_labels_only=pinned_labels_only,
        )
        return _convert.environment_from_proto(self._call(self._stub.SetResidency, request))

    # -- transfers ---------------------------------------------------------------------------

    def list_transfers(
        self, *, since: datetime | None = None, flow_run_id: str = "", limit: int = 100
    ) -> models.TransferListing:
        """Result transfers between environments, newest first (``limit`` is capped at 1000
        by the server), and the bytes of the completed ones since ``since`` per (from, to)."""
        request = control_pb2.ListTransfersRequest(
            since_unix_ms=core_convert.ms_from_time(since), flow_run_id=flow_run_id, limit=limit
        )
        response = self._call(self._stub.ListTransfers, request, idempotent=True)
        return _convert.transfer_listing_from_proto(response)

    # -- clean-up ----------------------------------------------------------------------------

    def delete_run(self, run_id_or_prefix: str, reason: str = "") -> models.RunDeletion:
        """Delete a finished run and its history; its stored result objects are queued for
        deletion at their sites (admins; audited with ``reason``)."""
        request = control_pb2.DeleteRunRequest(flow_run_id=run_id_or_prefix, reason=reason)
        answer = self._call(self._stub.DeleteRun, request)
        return models.RunDeletion(answer.flow_run_id, answer.stored_objects)

    def collect_results(
        self, *, dry_run: bool = False, environment: str = "", older_than_s: float = 0.0
    ) -> models.CollectResult:
        """Find stored objects no run refers to, older than ``older_than_s`` (0: the server's
        default, an hour), through a connected agent of each environment (or ``environment``
        only), and remove them unless ``dry_run`` (admins; audited)."""
        request = control_pb2.CollectResultsRequest(
            dry_run=dry_run, environment=environment, older_than_s=older_than_s
        )
        # The server bounds its sweeps by its call budget: wait a little longer than that.
        timeout = max(self.timeout_s, _COLLECT_TIMEOUT_S)
        answer = self._call(self._stub.CollectResults, request, timeout=timeout)
        return _convert.collect_result_from_proto(answer)

    # -- audit -------------------------------------------------------------------------------

    def list_audit_records(
        self,
        *,
        since: datetime | None = None,
        limit: int = 100,
        after_id: int = 0,
        newest: bool = False,
    ) -> list[models.AuditRecord]:
        """One page of the audit log in chain order (``limit`` is capped at 1000 by the
        server); page on with ``after_id`` = the last record's id."""
        request = control_pb2.ListAuditRecordsRequest(
            since_unix_ms=core_convert.ms_from_time(since),
            limit=limit,
            after_id=after_id,
            newest=newest,
        )
        response = self._call(self._stub.ListAuditRecords, request, idempotent=True)
        return [_convert.audit_record_from_proto(r) for r in response.records]

    def iter_audit_records(
        self, *, since: datetime | None = None, page: int = 1000
    ) -> Iterator[models.AuditRecord]:
        """Every record from ``since`` on, fetched page by page."""
        after_id = 0
        while True:
            records = self.list_audit_records(since=since, limit=page, after_id=after_id)
            yield from records
            if len(records) < page:
                return
            after_id = records[-1].id

    def verify_audit(self) -> models.AuditVerification:
        """Ask the control plane to recheck the whole chain (reads every record)."""
        response = self._call(
            self._stub.VerifyAudit,
            control_pb2.VerifyAuditRequest(),
            timeout=max(self.timeout_s, _VERIFY_TIMEOUT_S),
            idempotent=True,
        )
        return _convert.audit_verification_from_proto(response)

    # -- deployments (meridian/_deployments.py) ---------------------------------------------

    def create_deployment(
        self, spec: _deployments.DeploymentRequest
    ) -> _deployments.DeploymentInfo:
        answer = self._call(self._stub.CreateDeployment, _deployments.request_to_proto(spec))
        return _deployments.info_from_proto(answer)

    def list_deployments(self) -> list[_deployments.DeploymentInfo]:
        request = control_pb2.ListDeploymentsRequest()
        answer = self._call(self._stub.ListDeployments, request, idempotent=True)
        return [_deployments.info_from_proto(d) for d in answer.deployments]

    def get_deployment(self, name: str, version: int = 0) -> _deployments.DeploymentInfo:
        request = control_pb2.GetDeploymentRequest(name=name, version=version)
        answer = self._call(self._stub.GetDeployment, request, idempotent=True)
        return _deployments.info_from_proto(answer)

    def list_deployment_versions(self, name: str) -> list[_deployments.DeploymentInfo]:
        request = control_pb2.GetDeploymentRequest(name=name)
        answer = self._call(self._stub.ListDeploymentVersions, request, idempotent=True)
        return [_deployments.info_from_proto(v) for v in answer.versions]

    def set_deployment_paused(
        self, name: str, paused: bool, schedule_id: str = ""
    ) -> _deployments.DeploymentInfo:
        request = control_pb2.SetDeploymentPausedRequest(
            name=name, paused=paused, schedule_id=schedule_id
        )
        answer = self._call(self._stub.SetDeploymentPaused, request, idempotent=True)
        return _deployments.info_from_proto(answer)

    def delete_deployment(self, name: str) -> _deployments.DeploymentInfo:
        request = control_pb2.DeleteDeploymentRequest(name=name)
        return _deployments.info_from_proto(self._call(self._stub.DeleteDeployment, request))

    def trigger_deployment(
        self,
        name: str,
        parameters: Mapping[str, Any],
        *,
        idempotency_key: str = "",
        parent_run_id: str = "",
        parent_key: str = "",
    ) -> _deployments.TriggerResult:
        """A run of the deployment's current version; with a key, retried safely."""
        request = control_pb2.TriggerDeploymentRequest(
            name=name,
            parameters_json=json.dumps(dict(parameters)),
            idempotency_key=idempotency_key,
            parent_run_id=parent_run_id,
            parent_key=parent_key,
        )
        keyed = bool(idempotency_key or parent_key)
        answer = self._call(self._stub.TriggerDeployment, request, idempotent=keyed)
        return _deployments.trigger_from_proto(answer)

    # -- concurrency limits ------------------------------------------------------------------

    def set_limit(self, name: str, limit: int) -> _limits.LimitInfo:
        """Create or resize the named global concurrency limit ``name`` (admins; audited)."""
        request = control_pb2.SetLimitRequest(name=name, limit=limit)
        answer = self._call(self._stub.SetLimit, request, idempotent=True)
        return _limits.limit_from_proto(answer)

    def list_limits(self) -> list[_limits.LimitInfo]:
        """Every named limit with its holders and how many wait (viewers)."""
        request = control_pb2.ListLimitsRequest()
        answer = self._call(self._stub.ListLimits, request, idempotent=True)
        return [_limits.limit_from_proto(m) for m in answer.limits]

    def delete_limit(self, name: str) -> _limits.LimitInfo:
        """Delete a limit nothing holds or waits for (admins; audited)."""
        request = control_pb2.DeleteLimitRequest(name=name)
        return _limits.limit_from_proto(self._call(self._stub.DeleteLimit, request))

    def create_webhook(self, deployment: str, name: str = "") -> models.CreatedWebhook:
        """A token that may trigger ``deployment`` through ``POST /hooks/<id>`` (operators)."""
        request = control_pb2.CreateWebhookRequest(deployment=deployment, name=name)
        answer = self._call(self._stub.CreateWebhook, request)
        return models.CreatedWebhook(answer.webhook_id, answer.token, answer.url_path)

    def list_webhooks(self, deployment: str) -> list[models.WebhookInfo]:
        """The webhooks of ``deployment``, live and revoked, without their tokens (viewers)."""
        request = control_pb2.ListWebhooksRequest(deployment=deployment)
        answer = self._call(self._stub.ListWebhooks, request, idempotent=True)
        return [_convert.webhook_from_proto(w) for w in answer.webhooks]

    def revoke_webhook(self, deployment: str, webhook_id: str) -> models.WebhookInfo:
        """Revoke a webhook: its token is refused (401) from now on (operators; audited)."""
        request = control_pb2.RevokeWebhookRequest(deployment=deployment, webhook_id=webhook_id)
        answer = self._call(self._stub.RevokeWebhook, request, idempotent=True)
        return _convert.webhook_from_proto(answer)

    # -- plumbing ----------------------------------------------------------------------------

    def _call(
        self,
        method: Any,
        request: Any,
        *,
        timeout: float | None = None,
        idempotent: bool = False,
    ) -> Any:
        """One RPC. Idempotent calls ride out a control-plane restart: once this client has
        reached the server, UNAVAILABLE is retried with jittered backoff for a while."""
        deadline = time.monotonic() + RESTART_TOLERANCE_S
        delay = 0.2
        while True:
            try:
                response = method(
                    request, timeout=timeout or self.timeout_s, metadata=self._metadata
                )
            except grpc.RpcError as exc:
                retry = (
                    idempotent
                    and self._reached
                    and _code(exc) == grpc.StatusCode.UNAVAILABLE
                    and time.monotonic() + delay < deadline
                )
                if not retry:
                    raise self._map_error(exc) from None
                time.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, 5.0)
                continue
            self._reached = True
            return response

    def _map_error(self, exc: grpc.RpcError) -> MeridianError:
        return map_rpc_error(exc, self.address, self.ca_file)


def _chunks(sha256: str, data: bytes) -> Iterator[common_pb2.BundleChunk]:
    # The first chunk names the bundle; an empty bundle is still one (empty) chunk.
    yield common_pb2.BundleChunk(
        sha256=sha256, total_size=len(data), data=data[:UPLOAD_CHUNK_BYTES]
    )
    for start in range(UPLOAD_CHUNK_BYTES, len(data), UPLOAD_CHUNK_BYTES):
        yield common_pb2.BundleChunk(data=data[start : start + UPLOAD_CHUNK_BYTES])
