"""One attempt from assignment to its final report (docs/architecture.md, "Conventions").

A runner fetches the code bundle, proposes RUNNING and starts infrastructure only after the
control plane accepts. It then records the provider's handle, streams logs in batches, watches
for cancellation and reports how the attempt ended. Every report goes through the journal
(group-committed with other runners' reports, ``agent.commits``). The handle is persisted in
the same transaction as the report announcing it and removed in the same transaction as the
finished report, so an agent restart in between finds the attempt again.

Secret references are resolved after ACCEPT and just before the provider starts the step; a
failure to resolve ends the attempt without starting anything. The values go only into the
step's environment: every report (journaled, then sent) is scrubbed of them first.

Sealed inputs (``agent.sealing``) are opened at the same point with this agent's key for the
group named in them; the outcome is sealed with that group before it is journaled, also after
a re-attach (the seal is persisted with the handle). An attempt whose inputs cannot be opened
fails permanently with a message naming the key group, and nothing is started.

Results and inputs at the site (docs/results.md, ``agent.results``): before the step starts,
the runner decides where a stored result would go (``ResultTarget``, saved in the work dir; a
store the step names that this agent lacks fails it permanently, unstarted) and makes the
result references its inputs name local files (``agent.results.inputs``). When the outcome
names a result file, the runner puts it into the store off the event loop and reports its
``ResultRef`` instead of a value; the finished report is journaled only after the put
committed, so a re-attached attempt simply puts again (a no-op for the same bytes). The
result file, its sealed copy and copied inputs are deleted once the report is journaled.

Local faults never leave an attempt hanging: a full disk, an unwritable work dir, a provider
that raises or a runner that dies fail the attempt with error class ``infrastructure`` and a
message saying what happened, and a disk or work-dir fault makes the agent degraded
(``agent.health``). Every file, SQLite and process call of a runner runs off the event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import shutil
import traceback
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from agent.actions import Assignment, DecisionValue
from agent.bundles import BundleCache
from agent.handles import HandleStore, StoredHandle
from agent.health import DISK_FULL, Health, fault_reason
from agent.limits import AgentLimits
from agent.logbatch import LogCaps, pump_logs
from agent.metrics import ProviderErrors
from agent.reporter import Reporter
from agent.reports import (
    AttemptFinished,
    HandleRecorded,
    ProposeRunning,
    ReportBody,
    infrastructure_failure,
)
from agent.results import ResultStore
from agent.results.inputs import INPUTS_DIR, Fetcher, InputError, InputSite, materialize
from agent.results.registry import choose_store
from agent.results.upload import SEALED_FILE, ResultTarget, store_failure, store_result
from agent.sealing import AttemptSeal, open_assignment, seal_failure, seal_finished
from agent.secrets import Redactor, ResolvedSecrets, SecretError, SecretStore, redact_report
from meridian.core.errors import SealError
from meridian.core.runcontext import ENV_ATTEMPT_NUMBER, MAX_FIELD_CHARS, RunContext
from meridian.core.sealing import KeyRing
from meridian.core.tracecontext import traceparent
from providers.base import (
    ErrorInfo,
    ExecutionSpec,
    Handle,
    InputFile,
    LogRecord,
    Outcome,
    Provider,
    ProviderOptionsError,
    ResultPolicy,
)

log = logging.getLogger("meridian.agent.runner")

# After the attempt ends, give the provider's log stream this long to deliver its last lines.
LOG_DRAIN_S = 2.0
# ... and while it still makes progress (a flood being read to its end), at most this long.
LOG_DRAIN_MAX_S = 60.0
# After provider.cancel returns, how long wait() may take to notice before we stop waiting.
CANCEL_SETTLE_S = 10.0


@dataclass(frozen=True)
class RunnerContext:
    """What every runner of this agent shares."""

    reporter: Reporter
    bundles: BundleCache
    handles: HandleStore
    work_root: Path
    secrets: SecretStore = field(default_factory=SecretStore)
    # Sealing keys by key group: opens sealed inputs, seals results (agent.sealing).
    keys: KeyRing = field(default_factory=KeyRing)
    limits: AgentLimits = field(default_factory=AgentLimits)
    health: Health | None = None
    provider_errors: ProviderErrors = field(default_factory=ProviderErrors)
    # Who runs the steps, for meridian.context() in them (from the agent's identity).
    agent_id: str = ""
    environment: str = ""
    # This site's result stores by name (``[result_stores.NAME]``, built once at start) and
    # the environment's default one ("" = none: a result over the inline threshold fails).
    result_stores: Mapping[str, ResultStore] = field(default_factory=dict)
    default_result_store: str = ""
    # Downloads inputs produced in other environments (agent.transfers); None = such inputs
    # fail the attempt with an infrastructure error.
    fetcher: Fetcher | None = None

    def log_caps(self) -> LogCaps:
        lim = self.limits
        return LogCaps(
            lim.log_head_bytes, lim.log_tail_bytes, lim.log_rate_bytes_per_s, lim.log_burst_bytes
        )


class Runner:
    """Runs (or, after a restart, resumes watching) one attempt."""

    def __init__(self, attempt_id: str, fencing_token: int, provider: Provider, ctx: RunnerContext):
        self.attempt_id = attempt_id
        self.fencing_token = fencing_token
        self._provider = provider
        self._ctx = ctx
        self._verdict: DecisionValue | None = None
        self._decided = asyncio.Event()
        self._cancel_requested = asyncio.Event()
        self._cancel_reason = ""
        self._cancel_grace_s = 0.0
        self._finished = False
        # Empty until this attempt's secrets are resolved. After an agent restart (resume) it
        # stays empty: values are never persisted, so they cannot be scrubbed then.
        self._redactor = Redactor()
        self._seal: AttemptSeal | None = None  # set when the attempt's inputs were sealed
        self._log_records = 0  # records read from the provider's log stream so far
        self._target: ResultTarget | None = None  # where a result file goes (set before start)
        self._result_path: Path | None = None  # the step's result file, deleted once reported

    # ---- signals from the worker --------------------------------------------------------

    def decide(self, decision: DecisionValue) -> None:
        if self._verdict is None:
            self._verdict = decision
            self._decided.set()

    def cancel(self, reason: str, grace_s: float) -> None:
        if not self._cancel_requested.is_set():
            self._cancel_reason = reason or "cancelled"
            self._cancel_grace_s = max(0.0, grace_s)
            self._cancel_requested.set()

    # ---- lifecycles ---------------------------------------------------------------------

    async def run(self, assignment: Assignment) -> None:
        """Run a fresh assignment to its end; never raises except for task cancellation."""
        await self._guard(self._run(assignment))
        await self._discard_files()

    async def resume(self, handle: Handle, seal: AttemptSeal | None = None) -> None:
        """Watch infrastructure recovered after an agent restart until it ends."""
        self._seal = seal
        # Logs are not streamed again: the provider replays them from the start and the
        # control plane already holds those sent before the restart.
        await self._guard(self._watch(handle, stream_logs=False))
        await self._discard_files()

    @property
    def _work_dir(self) -> Path:
        return self._ctx.work_root / self.attempt_id

    async def _guard(self, body: Any) -> None:
        try:
            await body
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A bug or a misbehaving provider must not leave the attempt unreported.
            self._log_exception("runner for attempt %s failed")
            self._ctx.provider_errors.count(self._provider.type)
            await self._finish(self._local_fault(exc, "agent error while running the step"))

    @property
    def finished(self) -> bool:
        """Whether the attempt's final report is journaled."""
        return self._finished

    async def _run(self, assignment: Assignment) -> None:
        bundle_dir = await self._fetch_bundle(assignment.bundle_sha256)
        if self._finished:
            return
        if self._cancel_requested.is_set():
            return await self._finish_cancelled()
        await self._report(ProposeRunning())
        verdict = await self._await_decision()
        if verdict == "reject":
            return  # The control plane forgot this attempt; nothing was started.
        if verdict == "cancel" or self._cancel_requested.is_set():
            return await self._finish_cancelled()
        handle = await self._start(assignment, bundle_dir)
        if handle is not None:
            await self._watch(handle, stream_logs=True)

    async def _fetch_bundle(self, sha256: str) -> Path | None:
        if not sha256:
            return None
        try:
            return await self._until_cancelled(self._ctx.bundles.get(sha256))
        except Exception as exc:
            await self._finish(self._local_fault(exc, f"could not fetch code bundle {sha256}"))
            return None

    async def _await_decision(self) -> Literal["accept", "reject", "cancel"]:
        decided = asyncio.ensure_future(self._decided.wait())
        cancelled = asyncio.ensure_future(self._cancel_requested.wait())
        try:
            await asyncio.wait({decided, cancelled}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            decided.cancel()
            cancelled.cancel()
        if self._verdict is not None:
            return self._verdict.verdict
        return "cancel"

    async def _start(self, assignment: Assignment, bundle_dir: Path | None) -> Handle | None:
        spec = assignment.spec
        try:
            options = parse_options(spec.options_json)
            self._provider.validate_options(options)
        except (ValueError, ProviderOptionsError) as exc:
            await self._finish(_failure("permanent", "meridian.ProviderOptionsError", str(exc)))
            return None
        try:
            inputs_json, self._seal = open_assignment(self._ctx.keys, assignment)
        except SealError as exc:
            await self._finish(seal_failure(exc))
            return None
        policy = await self._result_policy(assignment)
        if policy is None:
            return None
        secrets = await self._resolve_secrets(spec.secret_map)
        if secrets is None:
            return None
        work_dir = self._work_dir
        if not await self._prepare_work_dir(work_dir):
            return None
        input_files = await self._materialize(assignment, work_dir)
        if input_files is None:
            return None
        execution = ExecutionSpec(
            attempt_id=assignment.attempt_id,
            flow_run_id=assignment.flow_run_id,
            step_run_id=assignment.step_run_id,
            step_key=assignment.step_key,
            step_name=spec.name,
            attempt_number=assignment.attempt_number,
            module=spec.module,
            function=spec.function,
            inputs_json=inputs_json,
            bundle_dir=bundle_dir,
            work_dir=work_dir,
            timeout_s=spec.timeout_s or None,
            options=options,
            isolation=spec.isolation,
            env={
                **secrets.env,
                # Spans the step creates become children of this attempt's span in the trace.
                "TRACEPARENT": traceparent(assignment.flow_run_id, assignment.attempt_id),
                # For the step's subprocesses and non-Python tools (providers add the run id,
                # step key and attempt id); Python code asks meridian.context() instead.
                ENV_ATTEMPT_NUMBER: str(assignment.attempt_number),
            },
            context=self._run_context(assignment),
            result_policy=policy,
            input_files=input_files,
        )
        try:
            handle = await self._provider.submit(execution)
        except Exception as exc:
            what = f"provider {self._provider.type!r} could not start the step"
            self._ctx.provider_errors.count(self._provider.type)
            await self._finish(self._local_fault(exc, what))
            return None
        seal_json = self._seal.to_json() if self._seal is not None else ""
        handle_json = handle.to_json()
        stored = StoredHandle(
            self.attempt_id, self.fencing_token, self._provider.type, handle_json, seal_json
        )
        # The handle and the report announcing it commit together (one batch, one fsync).
        await self._report(
            HandleRecorded(handle_json=handle_json, resource_id=handle.resource_id),
            save_handle=stored,
        )
        return handle

    def _run_context(self, assignment: Assignment) -> RunContext:
        return RunContext(
            run_id=assignment.flow_run_id,
            # Keys and names are bounded at the control plane's edge; cut, never refuse, here.
            step_key=assignment.step_key[:MAX_FIELD_CHARS],
            step_name=assignment.spec.name[:MAX_FIELD_CHARS] or None,
            attempt_id=assignment.attempt_id,
            attempt_number=assignment.attempt_number,
            environment=self._ctx.environment or None,
            agent_id=self._ctx.agent_id or None,
        )

    async def _result_policy(self, assignment: Assignment) -> ResultPolicy | None:
        """How the step hands back its result, and where a stored one goes; None once the
        attempt has been failed instead (a bad policy, a store this agent lacks)."""
        spec = assignment.spec
        try:
            policy = ResultPolicy.for_step(
                result_store=spec.result_store,
                inline_threshold_bytes=spec.inline_threshold_bytes,
                serializer=spec.serializer,
            )
            self._target = self._result_target(assignment)
        except Exception as exc:  # StepFileError, UnknownResultStore: nothing was started
            await self._finish(store_failure(exc, spec.result_store))
            return None
        if self._target.store:
            # A result the step wanted inline but over what this agent sends inline is stored
            # (as one over the threshold is) rather than failed at the bound.
            above_inline = self._ctx.reporter.inline_result_limit + 1
            if policy.inline_threshold > above_inline:
                policy = dataclasses.replace(policy, inline_threshold=above_inline)
        return policy

    async def _prepare_work_dir(self, work_dir: Path) -> bool:
        """Create the work dir and save the result target in it; False once the attempt has
        been failed instead."""
        try:
            await asyncio.to_thread(work_dir.mkdir, parents=True, exist_ok=True)
            if self._target is not None and self._target.store:
                # Without a store a re-attached attempt needs no target.
                await asyncio.to_thread(self._target.save, work_dir)
        except OSError as exc:
            await self._finish(self._local_fault(exc, f"cannot create the work dir {work_dir}"))
            return False
        return True

    def _result_target(self, assignment: Assignment) -> ResultTarget:
        """Where a result file of this attempt goes; UnknownResultStore when the step names a
        store this agent lacks. No store at all is decided later: most results are small."""
        ctx, requested = self._ctx, assignment.spec.result_store
        store = ""
        if requested or ctx.default_result_store:
            store = choose_store(ctx.result_stores, ctx.default_result_store, requested).name
        return ResultTarget(
            assignment.flow_run_id, assignment.step_key, assignment.attempt_id, store
        )

    async def _materialize(
        self, assignment: Assignment, work_dir: Path
    ) -> dict[str, InputFile] | None:
        """Local files of the input references, or None once the attempt has been finished
        instead (an input failed, or a cancel arrived while fetching)."""
        if not assignment.input_refs_json:
            return {}
        ctx = self._ctx
        site = InputSite(
            ctx.environment, ctx.result_stores, ctx.keys, ctx.fetcher, ctx.limits.min_free_bytes
        )
        work = materialize(
            assignment.input_refs_json,
            site,
            work_dir,
            attempt_id=self.attempt_id,
            fencing_token=self.fencing_token,
        )
        try:
            files: dict[str, InputFile] | None = await self._until_cancelled(work)
        except InputError as exc:
            await self._finish(_failure(exc.error_class, exc.type_name, str(exc)))
            return None
        if files is None:
            await self._finish_cancelled()
        return files

    async def _resolve_secrets(self, references: Mapping[str, str]) -> ResolvedSecrets | None:
        """This attempt's secrets, or None once the attempt has been finished instead."""
        if not references:
            return ResolvedSecrets()
        try:
            resolved = await self._until_cancelled(self._ctx.secrets.resolve(references))
        except SecretError as exc:
            # The message names the env var and reference only; resolvers never put values in.
            await self._finish(
                _failure(exc.error_class, f"meridian.{type(exc).__name__}", str(exc))
            )
            return None
        if resolved is None:
            await self._finish_cancelled()
            return None
        self._redactor = resolved.redactor
        return resolved

    async def _watch(self, handle: Handle, *, stream_logs: bool) -> None:
        logs = asyncio.ensure_future(self._stream_logs(handle)) if stream_logs else None
        waiting = asyncio.ensure_future(self._provider.wait(handle))
        cancelled = asyncio.ensure_future(self._cancel_requested.wait())
        try:
            await asyncio.wait({waiting, cancelled}, return_when=asyncio.FIRST_COMPLETED)
            if waiting.done():
                finished = await self._store_result(waiting, _finished_from(waiting))
            else:
                finished = await self._cancel_running(handle, waiting)
            if logs is not None:
                await self._drain_logs(logs)
        finally:
            cancelled.cancel()
            for task in (logs, waiting):
                if task is not None and not task.done():
                    task.cancel()
            if logs is not None:
                # Its last chunk (the kept tail, the drop notice) is journaled before the
                # finished report, never after it.
                await asyncio.wait({logs}, timeout=LOG_DRAIN_S)
        # The outcome and the handle's removal commit together: a restart finds either the
        # handle (and re-attaches) or the outcome in the journal, never neither.
        await self._finish(self._sealed(await self._with_disk_state(finished)), remove_handle=True)

    async def _store_result(
        self, waiting: asyncio.Future[Outcome], finished: AttemptFinished
    ) -> AttemptFinished:
        """``finished`` with the reference of the stored result in place of a value, when the
        step wrote its result to a file; the failure that explains it if it cannot be stored."""
        if waiting.exception() is not None or finished.outcome != "succeeded":
            return finished
        outcome = waiting.result()
        work_dir = self._work_dir
        path = outcome.result_path(work_dir)
        if outcome.result_file is None or path is None:
            return finished
        self._result_path = path
        store_name = ""
        try:
            # After a restart, the target saved before the step started (none: no store).
            target = self._target or await asyncio.to_thread(ResultTarget.load, work_dir)
            target = target or ResultTarget("", "", self.attempt_id, "")
            store_name = target.store
            ref = await asyncio.to_thread(
                store_result,
                self._ctx.result_stores,
                target,
                self._ctx.environment,
                path,
                outcome.result_file,
                keys=self._ctx.keys,
                seal=self._seal,
                sealed_path=work_dir / SEALED_FILE,
            )
        except Exception as exc:
            log.warning("attempt %s: its result could not be stored: %s", self.attempt_id, exc)
            return dataclasses.replace(store_failure(exc, store_name), exit_code=finished.exit_code)
        return dataclasses.replace(finished, result_json="", result_ref_json=ref.to_json())

    async def _discard_files(self) -> None:
        """Once the finished report is journaled: the result file (stored now, or failed),
        its sealed copy and the copied inputs are of no further use."""
        if not self._finished:
            return
        try:
            await asyncio.to_thread(_discard, self._work_dir, self._result_path)
        except Exception as exc:
            log.warning("attempt %s: cannot delete its result files: %s", self.attempt_id, exc)

    def _sealed(self, finished: AttemptFinished) -> AttemptFinished:
        """The outcome of a sealed step as it may leave the site: scrubbed of secrets first
        (a sealed text cannot be scrubbed later), then sealed."""
        if self._seal is None:
            return finished
        scrubbed = redact_report(finished, self._redactor)
        assert isinstance(scrubbed, AttemptFinished)
        try:
            return seal_finished(self._ctx.keys, self._seal, scrubbed)
        except SealError as exc:
            return seal_failure(exc)

    async def _cancel_running(
        self, handle: Handle, waiting: asyncio.Future[Outcome]
    ) -> AttemptFinished:
        try:
            await self._provider.cancel(handle, self._cancel_grace_s)
        except Exception:
            self._log_exception("provider could not cancel attempt %s")
        await _settle(waiting, self._cancel_grace_s + CANCEL_SETTLE_S)
        exit_code = 0
        if waiting.done() and not waiting.cancelled() and waiting.exception() is None:
            exit_code = waiting.result().exit_code or 0
        return _cancelled(self._cancel_reason, exit_code)

    async def _drain_logs(self, logs: asyncio.Future[None]) -> None:
        """Let the log stream finish: up to ``LOG_DRAIN_S`` at a time while it still makes
        progress (a flood is read to its end, so its tail is kept), at most ``LOG_DRAIN_MAX_S``."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + LOG_DRAIN_MAX_S
        while not logs.done() and loop.time() < give_up:
            before = self._log_records
            await _settle(logs, min(LOG_DRAIN_S, max(0.0, give_up - loop.time())))
            if self._log_records == before:
                return

    async def _counted(self, records: AsyncIterator[LogRecord]) -> AsyncIterator[LogRecord]:
        async for record in records:
            self._log_records += 1
            yield record

    async def _stream_logs(self, handle: Handle) -> None:
        # Logs are best effort: a provider that cannot read them (e.g. no log credentials) must
        # not fail the attempt, whose outcome comes from wait(); say so once, in its own log.
        try:
            await pump_logs(
                self._counted(self._provider.logs(handle)),
                self._report,
                scrub=self._redactor.scrub,
                caps=self._ctx.log_caps(),
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            message = self._redactor.scrub(f"{type(exc).__name__}: {exc}")
            log.warning("attempt %s: cannot read its logs: %s", self.attempt_id, message)

    async def _until_cancelled(self, work: Any) -> Any:
        """Await ``work`` unless a cancel arrives first (then return None)."""
        task = asyncio.ensure_future(work)
        cancelled = asyncio.ensure_future(self._cancel_requested.wait())
        try:
            await asyncio.wait({task, cancelled}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            cancelled.cancel()
        if task.done():
            return task.result()
        task.cancel()
        return None

    def _log_exception(self, message: str) -> None:
        # The agent's own log outlives the attempt and is often collected centrally; a provider
        # error may quote the step's environment, so the traceback is scrubbed like a report.
        trace = self._redactor.scrub(traceback.format_exc())
        log.error(message + "\n%s", self.attempt_id, trace)

    # ---- reporting ----------------------------------------------------------------------

    async def _finish_cancelled(self) -> None:
        await self._finish(_cancelled(self._cancel_reason, 0))

    async def _finish(self, finished: AttemptFinished, *, remove_handle: bool = False) -> None:
        if not self._finished:
            await self._report(finished, remove_handle=remove_handle)
            self._finished = True
        elif remove_handle:
            await self._ctx.reporter.remove_handle(self.attempt_id)

    async def _report(
        self,
        body: ReportBody,
        *,
        save_handle: StoredHandle | None = None,
        remove_handle: bool = False,
    ) -> None:
        # The one door to the journal and the control plane: nothing passes it unscrubbed.
        body = redact_report(body, self._redactor)
        await self._ctx.reporter.report(
            self.attempt_id,
            self.fencing_token,
            body,
            save_handle=save_handle,
            remove_handle=remove_handle,
        )

    # ---- local faults -------------------------------------------------------------------

    def _local_fault(self, exc: BaseException, what: str) -> AttemptFinished:
        """The infrastructure failure for ``exc``; a disk or work-dir fault degrades the agent."""
        reason = fault_reason(exc)
        message = f"{what}: {type(exc).__name__}: {exc}"
        if reason is not None and self._ctx.health is not None:
            self._ctx.health.fault(reason, message)
            message = f"agent is degraded ({reason}): {message}"
        return infrastructure_failure(message, _qualname(exc))

    async def _with_disk_state(self, finished: AttemptFinished) -> AttemptFinished:
        """A failed attempt on a full disk says so: its own error is likely a symptom."""
        health = self._ctx.health
        if finished.outcome != "failed" or health is None:
            return finished
        if not await asyncio.to_thread(health.disk_full_now):
            return finished
        health.fault(DISK_FULL, f"attempt {self.attempt_id} failed with the disk full")
        original = finished.error.message if finished.error is not None else ""
        message = (
            f"the agent's disk is full (data dir {health.data_dir}); the step failed: "
            f"{original[:2000]}"
        )
        return dataclasses.replace(
            finished,
            error=ErrorInfo(
                error_class="infrastructure", type="meridian.DiskFull", message=message
            ),
        )


def _discard(work_dir: Path, result_path: Path | None) -> None:
    for path in (result_path, work_dir / SEALED_FILE):
        if path is not None:
            path.unlink(missing_ok=True)
    shutil.rmtree(work_dir / INPUTS_DIR, ignore_errors=True)


def parse_options(options_json: str) -> dict[str, Any]:
    """Per-step provider options; ValueError unless they are a JSON object."""
    if not options_json.strip():
        return {}
    value = json.loads(options_json)
    if not isinstance(value, Mapping):
        raise ValueError("step options must be a JSON object")
    return dict(value)


async def _settle(task: asyncio.Future[Any], timeout: float) -> None:
    """Wait up to ``timeout`` for ``task`` to end without cancelling it or raising its error."""
    await asyncio.wait({task}, timeout=timeout)


def _finished_from(waiting: asyncio.Future[Outcome]) -> AttemptFinished:
    exc = waiting.exception()
    if exc is not None:
        return infrastructure_failure(f"provider lost track of the step: {exc}", _qualname(exc))
    outcome = waiting.result()
    error = outcome.error
    if error is None and outcome.state != "succeeded":
        error = ErrorInfo(
            error_class="infrastructure",
            type="meridian.ProviderError",
            message=f"step ended {outcome.state} with exit code {outcome.exit_code}",
        )
    return AttemptFinished(
        outcome=outcome.state,
        result_json=outcome.result_json or "",
        error=error,
        exit_code=outcome.exit_code or 0,
    )


def _cancelled(reason: str, exit_code: int) -> AttemptFinished:
    return AttemptFinished(
        outcome="cancelled",
        error=ErrorInfo(error_class="cancelled", type="meridian.Cancelled", message=reason),
        exit_code=exit_code,
    )


def _failure(error_class: str, type_name: str, message: str) -> AttemptFinished:
    return AttemptFinished(
        outcome="failed",
        error=ErrorInfo(error_class=error_class, type=type_name, message=message),
    )


def _qualname(exc: BaseException) -> str:
    return f"{type(exc).__module__}.{type(exc).__qualname__}"
