"""ControlService: what the CLI and flow runners call. Validates at the edge, then delegates
to orchestration (writes) or store queries (reads)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
from collections.abc import AsyncIterator

import grpc

from control_plane import audit
from control_plane.api import convert, views
from control_plane.api.agent_service import bundle_chunks
from control_plane.api.authz import CURRENT_PRINCIPAL, allowed_environments
from control_plane.api.deployments_api import DeploymentsApi
from control_plane.api.errors import StreamClosed, rpc, rpc_stream
from control_plane.api.limits_api import LimitsApi
from control_plane.api.services import Services
from control_plane.api.validation import (
    validate_approval_request,
    validate_create_run,
    validate_decision,
    validate_error,
    validate_options,
    validate_reason,
    validate_run_state,
    validate_submissions,
)
from control_plane.api.webhooks_api import WebhooksApi
from control_plane.orchestration.fleet import HeartbeatPolicy
from control_plane.orchestration.scopes import check_step_targets
from control_plane.scheduler.registry import CloseOut, DrainOut
from control_plane.store import queries
from control_plane.transfers.broker import TransferBroker, TransferUnavailable
from control_plane.usecases.agent_admin import drain_agent, revoke_agent
from control_plane.usecases.approvals import decide_approval, request_approval
from control_plane.usecases.bundles import bundle_data, has_bundle, store_bundle
from control_plane.usecases.cleanup import delete_run
from control_plane.usecases.environments import (
    ResidencyRefusal,
    environment_policies,
    record_residency_refusal,
    set_residency,
)
from control_plane.usecases.run_waits import run_waiting_for
from control_plane.usecases.runners import REMOTE_TRIGGER, create_hosted_run, fenced
from control_plane.usecases.runs import (
    cancel_run,
    finish_run,
    renew_runner_lease,
    resume_run_for_runner,
    retry_run_for_runner,
    start_run,
)
from control_plane.usecases.steps import submit_steps
from control_plane.usecases.subflows import start_child_run
from control_plane.usecases.transfers import list_transfers
from meridian.core.convert import ms_from_time
from meridian.core.errors import (
    ConflictError,
    LimitExceeded,
    PermissionDenied,
    ValidationError,
)
from meridian.core.selectors import validate_value
from meridian.core.states import TERMINAL_RUN, RunState
from protos.meridian.v1 import common_pb2, control_pb2, control_pb2_grpc

WATCH_SAFETY_WAKE_S = 15.0
# Events read per page of a watch stream; a batched stream sends each page in messages of at
# most WATCH_BATCH_BYTES (one update larger than that goes alone, within the message limit).
WATCH_PAGE = 500
WATCH_BATCH_PAGE = 1000
WATCH_BATCH_BYTES = 1024 * 1024
# Stored outcomes of ended steps in one SubmitSteps answer (a resumed map's results may be
# megabytes each): batch calls beyond it are answered ``outcome_omitted`` and asked again.
MAX_ANSWER_OUTCOME_BYTES = 4 * 1024 * 1024
SERVER_VERSION = "0.1.0"
MAX_AUDIT_PAGE = 1000
DEFAULT_TRANSFERS_PAGE = 100
MAX_TRANSFERS_PAGE = 1000
MAX_STEP_KEY = 512
# CollectResults: how long sweeps may take at most, the default and largest age of an orphan.
COLLECT_WAIT_S = 50.0
DEFAULT_ORPHAN_AGE_S = 3600.0
MAX_ORPHAN_AGE_S = 10 * 365 * 86400.0


class ControlService(
    DeploymentsApi, LimitsApi, WebhooksApi, control_pb2_grpc.ControlServiceServicer
):
    def __init__(self, services: Services) -> None:
        self._s = services
        self._transfers = TransferBroker(
            services.store,
            services.registry,
            services.relay,
            lambda: services.dispatcher.max_silence_s,
        )

    @rpc
    async def GetServerInfo(
        self, request: control_pb2.GetServerInfoRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.ServerInfo:
        return control_pb2.ServerInfo(
            version=SERVER_VERSION, agent_address=self._s.advertised_agent_address
        )

    async def _visible_run(self, run_id: str, *, prefix: bool = False) -> str:
        """The full id of a run the caller may see (``prefix``: given as a unique prefix).

        A run outside a scoped caller's environments is NOT_FOUND, exactly like a missing one,
        so a scoped token learns nothing about other tenants' runs. Unscoped callers pass
        through (the handler's own lookup reports a missing run).
        """
        caller = allowed_environments()
        if not caller:
            return run_id
        if prefix:
            return await self._s.store.run(queries.resolve_run_id, run_id, caller)
        await self._s.store.run(queries.run_scope, run_id, caller)
        return run_id

    # ---- bundles ------------------------------------------------------------------------

    @rpc
    async def HasBundle(
        self, request: control_pb2.HasBundleRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.HasBundleResponse:
        present = await self._s.store.run(has_bundle, request.sha256)
        return control_pb2.HasBundleResponse(
            present=present, max_size=self._s.config.max_bundle_bytes
        )

    @rpc
    async def UploadBundle(
        self,
        request_iterator: AsyncIterator[common_pb2.BundleChunk],
        context: grpc.aio.ServicerContext,
    ) -> control_pb2.UploadBundleResponse:
        limit = self._s.config.max_bundle_bytes
        sha256, declared, size = "", 0, 0
        parts: list[bytes] = []
        async for chunk in request_iterator:
            if not parts and not sha256:
                sha256, declared = chunk.sha256, chunk.total_size
                if declared > limit:
                    raise LimitExceeded(
                        f"bundle of {declared} bytes exceeds the limit of {limit} bytes"
                    )
                if len(sha256) != 64:
                    raise ValidationError("the first chunk must carry the bundle's sha256")
            size += len(chunk.data)
            if size > limit or size > declared:
                raise LimitExceeded(
                    f"bundle is larger than declared or than the limit of {limit} bytes"
                )
            parts.append(chunk.data)
        data = b"".join(parts)
        if hashlib.sha256(data).hexdigest() != sha256 or size != declared:
            raise ValidationError("bundle content does not match its declared sha256 and size")
        await self._s.store.transact(store_bundle, sha256, data)
        return control_pb2.UploadBundleResponse(sha256=sha256, size=size)

    # ---- runs ---------------------------------------------------------------------------

    @rpc
    async def CreateRun(
        self, request: control_pb2.CreateRunRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.CreateRunResponse:
        validate_create_run(request)
        if request.parent_run_id:
            return await self._create_child_run(request)
        if request.trigger == REMOTE_TRIGGER:
            # `meridian run --remote`: the body runs on a hosted runner (decision 0018).
            run = await self._s.store.transact(
                create_hosted_run,
                flow_name=request.flow_name,
                entrypoint=request.entrypoint,
                parameters_json=request.parameters_json or "{}",
                bundle_sha256=request.bundle_sha256,
                runner_target=request.runner_target,
                scope=allowed_environments(),
                concurrency=tuple(request.concurrency),
            )
            return control_pb2.CreateRunResponse(flow_run_id=run.id)
        run_id, runner_token = await self._s.store.transact(
            start_run,
            flow_name=request.flow_name,
            entrypoint=request.entrypoint,
            parameters_json=request.parameters_json or "{}",
            bundle_sha256=request.bundle_sha256,
            trigger=request.trigger or "api",
            scope=allowed_environments(),
            concurrency=tuple(request.concurrency),
        )
        return control_pb2.CreateRunResponse(flow_run_id=run_id, runner_token=runner_token)

    async def _create_child_run(
        self, request: control_pb2.CreateRunRequest
    ) -> control_pb2.CreateRunResponse:
        """A subflow: only the parent's runner token may start it (``usecases.subflows``)."""
        principal = CURRENT_PRINCIPAL.get()
        run, token, _ = await self._s.store.transact(
            start_child_run,
            parent_run_id=request.parent_run_id,
            parent_key=request.parent_key,
            caller_run_id=principal.flow_run_id if principal is not None else None,
            flow_name=request.flow_name,
            entrypoint=request.entrypoint,
            parameters_json=request.parameters_json or "{}",
            bundle_sha256=request.bundle_sha256,
            caller_epoch=_runner_epoch(),
        )
        return control_pb2.CreateRunResponse(flow_run_id=run.id, runner_token=token)

    @rpc
    async def SubmitSteps(
        self, request: control_pb2.SubmitStepsRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.SubmitStepsResponse:
        submissions = validate_submissions(request)
        validate_options(submissions, self._s.registry.option_schema)
        caller = allowed_environments()
        scope = await self._s.store.run(queries.run_scope, request.flow_run_id, caller)
        # Steps stay inside the run's scope, whoever submits them (or the caller's own scope,
        # should a scoped caller ever reach an unscoped run).
        targets = ((key, spec.target) for key, spec in submissions.specs())
        check_step_targets(targets, scope or caller)
        # Stores are known only for connected agents (the registry, not the database): a call
        # naming one is refused when every agent matching it is connected and lacks it.
        names_store = any(spec.result_store for _, spec in submissions.specs())
        stores = self._s.registry.advertised_stores() if names_store else None
        # Assigned in the same transaction when a matching agent has a free slot.
        needs = (
            (call.spec.target, call.spec.provider, call.spec.result_store)
            for call in submissions.calls
        )
        try:
            submitted = await self._s.dispatcher.queue_and_assign(
                needs,
                fenced(submit_steps, _runner_epoch()),
                request.flow_run_id,
                submissions.calls,
                outcome_bytes=MAX_ANSWER_OUTCOME_BYTES,
                full_answers=submissions.singles,  # older clients send only these
                caller=caller,
                result_stores=stores,
            )
        except ResidencyRefusal as refusal:
            # The submission rolled back; its refusal is kept in the audit log.
            await self._s.store.transact(record_residency_refusal, refusal)
            raise
        return views.submit_answer(submitted, submissions.singles, submissions.batch_sizes)

    @rpc
    async def FinishRun(
        self, request: control_pb2.FinishRunRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.FinishRunResponse:
        error = validate_error(request.error)
        if request.succeeded and request.result_json:
            _require_json(request.result_json, "result_json")
        await self._visible_run(request.flow_run_id)
        state = await self._s.store.transact(
            fenced(finish_run, _runner_epoch()),
            request.flow_run_id,
            succeeded=request.succeeded,
            result_json=request.result_json or "null",
            error=error,
        )
        return control_pb2.FinishRunResponse(state=state)

    @rpc
    async def RenewRunnerLease(
        self, request: control_pb2.RenewRunnerLeaseRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.RenewRunnerLeaseResponse:
        await self._visible_run(request.flow_run_id)
        state, expires = await self._s.store.transact(
            fenced(renew_runner_lease, _runner_epoch()),
            request.flow_run_id,
            request.lease_s or 30.0,
        )
        return control_pb2.RenewRunnerLeaseResponse(
            state=state, expires_at_unix_ms=ms_from_time(expires)
        )

    @rpc
    async def CancelRun(
        self, request: control_pb2.CancelRunRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.CancelRunResponse:
        reason = validate_reason(request.reason, "cancel reason")
        run_id = await self._visible_run(request.flow_run_id.strip(), prefix=True)
        run, waiting = await self._s.store.transact(cancel_run, run_id, reason)
        return control_pb2.CancelRunResponse(
            flow_run_id=run.id, state=run.state, attempts_to_confirm=waiting
        )

    @rpc
    async def ResumeRun(
        self, request: control_pb2.ResumeRunRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.RunToExecute:
        run_id = await self._visible_run(request.flow_run_id.strip(), prefix=True)
        run, watermark, token = await self._s.store.transact(
            resume_run_for_runner, run_id, here=request.here
        )
        return views.run_to_execute(run, watermark, token, hosted=not token)

    @rpc
    async def RetryRun(
        self, request: control_pb2.RetryRunRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.RunToExecute:
        run_id = await self._visible_run(request.flow_run_id.strip(), prefix=True)
        run, token = await self._s.store.transact(retry_run_for_runner, run_id, here=request.here)
        return views.run_to_execute(run, 0, token, hosted=not token)

    @rpc
    async def RequestApproval(
        self, request: control_pb2.RequestApprovalRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.ApprovalState:
        validate_approval_request(request)
        await self._visible_run(request.flow_run_id)
        approval, run_state = await self._s.store.transact(
            fenced(request_approval, _runner_epoch()),
            request.flow_run_id,
            request.key,
            request.message,
            request.timeout_s,
        )
        return views.approval_state(approval, run_state)

    @rpc
    async def DecideApproval(
        self, request: control_pb2.DecideApprovalRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.ApprovalState:
        validate_decision(request)
        run_id = await self._visible_run(request.flow_run_id.strip(), prefix=True)
        approval, run_state = await self._s.store.transact(
            decide_approval, run_id, request.key, request.approve, request.reason
        )
        return views.approval_state(approval, run_state)

    @rpc_stream
    async def DownloadBundle(
        self, request: control_pb2.DownloadBundleRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[common_pb2.BundleChunk]:
        data = await self._s.store.run(bundle_data, request.sha256)
        for chunk in bundle_chunks(request.sha256, data):
            yield chunk

    @rpc_stream
    async def WatchRun(
        self, request: control_pb2.WatchRunRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[control_pb2.RunUpdate]:
        run_id, after = request.flow_run_id, request.after_event_id
        await self._visible_run(run_id)
        page = WATCH_BATCH_PAGE if request.batched else WATCH_PAGE
        wake = self._s.notifier.subscribe(run_id)
        try:
            while True:
                wake.clear()
                state, rows = await self._s.store.run(queries.events_after, run_id, after, page)
                if request.batched:
                    for batch in views.update_batches(rows, WATCH_BATCH_BYTES):
                        yield batch
                    after = rows[-1].event.id if rows else after
                else:
                    for row in rows:
                        after = row.event.id
                        yield views.run_update(row)
                if not rows and state in TERMINAL_RUN:
                    return
                if not rows:
                    # Woken by the notifier after each commit; the timeout is only a backstop.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(WATCH_SAFETY_WAKE_S):
                            await wake.wait()
        finally:
            self._s.notifier.unsubscribe(run_id, wake)

    # ---- agents -------------------------------------------------------------------------

    @rpc
    async def RevokeAgent(
        self, request: control_pb2.AgentRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.AgentInfo:
        reason = validate_reason(request.reason, "revoke reason")
        agent = await self._s.store.transact(
            revoke_agent, request.agent, reason, allowed_environments()
        )
        session = self._s.registry.get(agent.id)
        if session is not None:
            # Close the stream now; its certificate is refused at every later connection.
            session.send(CloseOut("this agent was revoked", refused=True))
        return views.agent_info(
            agent, 0, None, now=self._s.store.clock(), policy=self._heartbeats()
        )

    @rpc
    async def DrainAgent(
        self, request: control_pb2.AgentRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.AgentInfo:
        reason = validate_reason(request.reason, "drain reason")
        agent = await self._s.store.transact(
            drain_agent, request.agent, reason, allowed_environments()
        )
        session = self._s.registry.get(agent.id)
        if session is not None:
            session.drain_requested = session.draining = True
            session.send(DrainOut(reason or "an operator drained this agent"))
        return views.agent_info(
            agent,
            session.in_use if session else 0,
            session,
            now=self._s.store.clock(),
            policy=self._heartbeats(),
        )

    # ---- reading ------------------------------------------------------------------------

    @rpc
    async def GetRun(
        self, request: control_pb2.GetRunRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.RunDetail:
        run_id = await self._visible_run(request.flow_run_id.strip(), prefix=True)
        view = await self._s.store.run(queries.run_view, run_id)
        detail = views.run_detail(view)
        if view.run.state == RunState.PENDING or view.run.wants_runner:
            hosts = self._s.registry.runner_hosts(self._s.dispatcher.max_silence_s)
            detail.waiting_for = await self._s.store.run(
                run_waiting_for, run_id, self._s.store.clock(), hosts
            )
        return detail

    @rpc
    async def ListRuns(
        self, request: control_pb2.ListRunsRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.ListRunsResponse:
        limit = min(request.limit or 50, 1000)
        rows = await self._s.store.run(
            queries.list_runs,
            limit,
            validate_run_state(request.state),
            request.flow_name,
            allowed_environments(),
        )
        return control_pb2.ListRunsResponse(runs=[views.run_summary(*row) for row in rows])

    @rpc
    async def GetLogs(
        self, request: control_pb2.GetLogsRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.GetLogsResponse:
        limit = min(request.limit or 10_000, 10_000)
        run_id = await self._visible_run(request.flow_run_id.strip(), prefix=True)
        rows = await self._s.store.run(
            queries.logs_page,
            run_id,
            request.step_key,
            request.after_id,
            limit,
        )
        return views.logs_page(rows, request.after_id)

    @rpc
    async def ListAgents(
        self, request: control_pb2.ListAgentsRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.ListAgentsResponse:
        rows = await self._s.store.run(queries.all_agents)
        scope = allowed_environments()
        if scope:
            rows = [(agent, held) for agent, held in rows if agent.environment in scope]
        live = {s.agent.agent_id: s for s in self._s.registry.sessions()}
        now, policy = self._s.store.clock(), self._heartbeats()
        return control_pb2.ListAgentsResponse(
            agents=[
                views.agent_info(agent, held, live.get(agent.id), now=now, policy=policy)
                for agent, held in rows
            ]
        )

    # ---- environments -------------------------------------------------------------------

    @rpc
    async def ListEnvironments(
        self, request: control_pb2.ListEnvironmentsRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.ListEnvironmentsResponse:
        policies = await self._s.store.run(environment_policies, allowed_environments())
        sessions = self._s.registry.sessions()
        return control_pb2.ListEnvironmentsResponse(
            environments=[
                views.environment_info(
                    policy, [s for s in sessions if s.agent.environment == policy.name]
                )
                for policy in policies
            ]
        )

    @rpc
    async def SetResidency(
        self, request: control_pb2.SetResidencyRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.EnvironmentInfo:
        """Set or (with an empty rule) remove an environment's residency rule; audited. It
        applies to attempts queued from now on."""
        reason = validate_reason(request.reason, "residency reason")
        policy = await self._s.store.transact(
            set_residency,
            request.environment.strip(),
            request.rule.strip(),
            reason,
            allowed_environments(),
            pinned_labels_only=request.pinned_labels_only,
        )
        sessions = [s for s in self._s.registry.sessions() if s.agent.environment == policy.name]
        return views.environment_info(policy, sessions)

    def _heartbeats(self) -> HeartbeatPolicy:
        config = self._s.config
        return HeartbeatPolicy(config.heartbeat_interval_s, config.agent_lost_after_s)

    # ---- clean-up of runs and stored results -------------------------------------------

    @rpc
    async def DeleteRun(
        self, request: control_pb2.DeleteRunRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.DeleteRunResponse:
        reason = validate_reason(request.reason, "delete reason")
        run_id = await self._visible_run(request.flow_run_id.strip(), prefix=True)
        deleted = await self._s.store.transact(delete_run, run_id, reason)
        if self._s.housekeeping is not None:
            self._s.housekeeping.wake()  # send the queued deletions now
        return control_pb2.DeleteRunResponse(
            flow_run_id=deleted.flow_run_id, stored_objects=deleted.queued
        )

    @rpc
    async def CollectResults(
        self, request: control_pb2.CollectResultsRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.CollectResultsResponse:
        environment, older_than_s = _collect_options(request)
        scope = allowed_environments()
        if environment and scope and environment not in scope:
            raise PermissionDenied(
                f"this API token is limited to environments {', '.join(scope)}; "
                f"it cannot collect results of {environment!r}"
            )
        if self._s.housekeeping is None:
            raise ConflictError("result housekeeping is not running on this control plane")
        # Within the call's budget (api/budgets.py), leaving time to answer.
        budget_s = max(1.0, min(COLLECT_WAIT_S, 0.8 * self._s.config.call_budget_s))
        report = await self._s.housekeeping.collect(
            environment=environment,
            older_than_s=older_than_s,
            dry_run=request.dry_run,
            scope=scope,
            budget_s=budget_s,
        )
        return views.collect_answer(report)

    # ---- result transfers -----------------------------------------------------------------

    @rpc_stream
    async def FetchResult(
        self, request: control_pb2.FetchRunResultRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[common_pb2.ResultChunk]:
        """A step's stored result, relayed from an agent of the environment that keeps it."""
        step_key = request.step_key
        if not step_key or len(step_key) > MAX_STEP_KEY:
            raise ValidationError(f"give the step key (1 to {MAX_STEP_KEY} characters)")
        run_id = await self._s.store.run(
            queries.resolve_run_id, request.flow_run_id.strip(), allowed_environments()
        )
        principal = CURRENT_PRINCIPAL.get()
        requester = principal.actor if principal is not None else audit.CLI
        chunks = self._transfers.fetch_for_client(requester, run_id, step_key, request.offset)
        try:
            async for chunk in chunks:
                yield convert.chunk_to_proto(chunk)
        except TransferUnavailable as exc:
            raise StreamClosed(str(exc)) from None

    @rpc
    async def ListTransfers(
        self, request: control_pb2.ListTransfersRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.ListTransfersResponse:
        since = _audit_since(request.since_unix_ms)
        scope = allowed_environments()
        run_id = request.flow_run_id.strip()
        if run_id:
            run_id = await self._s.store.run(queries.resolve_run_id, run_id, scope)
        listing = await self._s.store.run(
            lambda session: list_transfers(
                session,
                since=since,
                run_id=run_id,
                limit=min(request.limit or DEFAULT_TRANSFERS_PAGE, MAX_TRANSFERS_PAGE),
                scope=scope,
            )
        )
        totals = [
            (t.from_environment, t.to_environment, t.bytes, t.transfers) for t in listing.totals
        ]
        return views.transfers_page(listing.transfers, totals)

    # ---- audit --------------------------------------------------------------------------

    @rpc
    async def ListAuditRecords(
        self, request: control_pb2.ListAuditRecordsRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.ListAuditRecordsResponse:
        if allowed_environments():
            # Records of every environment share one hash chain; a filtered page could be
            # neither verified nor paged reliably, so scoped tokens do not read it.
            raise PermissionDenied(
                "the audit log spans every environment; reading it needs an API token that "
                "is not scoped to environments"
            )
        if request.after_id < 0:
            raise ValidationError("after_id must not be negative")
        since = _audit_since(request.since_unix_ms)
        rows = await self._s.store.run(
            lambda session: audit.list_records(
                session,
                since=since,
                after_id=request.after_id,
                limit=min(request.limit or 100, MAX_AUDIT_PAGE),
                newest=request.newest,
            )
        )
        return views.audit_page(rows)

    @rpc
    async def VerifyAudit(
        self, request: control_pb2.VerifyAuditRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.VerifyAuditResponse:
        return views.verify_report(await self._s.store.run(audit.verify_chain))


def _runner_epoch() -> int | None:
    """The runner epoch of the caller's token when it is a flow runner's (decision 0018)."""
    principal = CURRENT_PRINCIPAL.get()
    return principal.runner_epoch if principal is not None else None


def _audit_since(value_ms: int) -> dt.datetime | None:
    if value_ms == 0:
        return None
    try:
        return dt.datetime.fromtimestamp(value_ms / 1000, dt.UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise ValidationError(f"since_unix_ms {value_ms} is not a representable time") from exc


def _require_json(text: str, what: str) -> None:
    try:
        json.loads(text)
    except ValueError as exc:
        raise ValidationError(f"{what} is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise ValidationError(f"{what} is nested too deeply") from exc


def _collect_options(request: control_pb2.CollectResultsRequest) -> tuple[str, float]:
    """(environment, older_than_s) of a CollectResults request, checked."""
    environment = request.environment.strip()
    if environment:
        problem = validate_value(environment)
        if problem is not None:
            raise ValidationError(f"environment: {problem}")
    older_than_s = request.older_than_s
    if not 0 <= older_than_s <= MAX_ORPHAN_AGE_S:  # NaN fails too
        raise ValidationError(
            f"older_than_s must be from 0 (the default, {DEFAULT_ORPHAN_AGE_S:g} s) to "
            f"{MAX_ORPHAN_AGE_S:g} seconds"
        )
    return environment, older_than_s or DEFAULT_ORPHAN_AGE_S
