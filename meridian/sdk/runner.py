"""The flow runner: run one flow body here, with its steps dispatched through the control plane.

``run_flow`` loads the flow, parses parameters, ships the code bundle, creates the run, opens
one watch stream (``_watch.RunWatcher``) that resolves step futures, runs the body in the
calling thread with a ``FlowContext`` active, and reports the body's outcome with
``FinishRun``. This is what ``meridian run`` does.

A sealed flow (``@flow(seal=...)``) reports its result and its error's texts sealed; any flow
keeps the opened error texts of sealed steps out of the error it reports (docs/security.md).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Protocol

from meridian import models
from meridian.client import BundleLike
from meridian.core.bundle import pack_directory, unpack_bundle
from meridian.core.errors import ConflictError, MeridianError, SealError, StepCancelled, StepFailed
from meridian.core.runcontext import RunContext, flow_scope
from meridian.core.sealing import FLOW as FLOW_STEP
from meridian.core.sealing import RESULT, KeyRing, seal_text, sealed_envelope
from meridian.sdk._jsonvalues import describe_non_json, dumps
from meridian.sdk._sealed import mask_opened_texts, seal_flow_error, sealed_failures
from meridian.sdk._watch import RunWatcher, UpdateCallback
from meridian.sdk.context import FlowContext, activate
from meridian.sdk.flow_limits import wait_until_started
from meridian.sdk.loader import load_entrypoint, split_entrypoint
from meridian.sdk.params import call_arguments, parse_params
from meridian.sdk.refparams import with_result_refs
from meridian.sdk.results import with_markers

log = logging.getLogger(__name__)

MAX_TRACEBACK_CHARS = 64 * 1024
MAX_MESSAGE_CHARS = 8 * 1024
# After FinishRun the control plane ends the watch stream with the run's final update; give
# the watcher this long to deliver it to on_update before closing the stream ourselves.
FINAL_UPDATE_WAIT_S = 5.0
# The runner renews its lease every RUNNER_LEASE_RENEW_S for RUNNER_LEASE_S: a runner gone
# for longer than the lease marks its run CRASHED.
RUNNER_LEASE_S = float(os.environ.get("MERIDIAN_RUNNER_LEASE_S", "20"))
RUNNER_LEASE_RENEW_S = RUNNER_LEASE_S / 4
# After Ctrl-C: how long to wait for the agents to confirm the run's cancellation.
CANCEL_CONFIRM_WAIT_S = float(os.environ.get("MERIDIAN_CANCEL_WAIT_S", "30"))
CANCEL_REASON = "the flow runner was interrupted (Ctrl-C or SIGTERM)"


class RunnerClient(Protocol):
    """The part of ``ControlClient`` the runner uses."""

    def ensure_bundle(self, bundle: BundleLike) -> None: ...

    def create_run(
        self,
        flow_name: str,
        entrypoint: str,
        parameters: Mapping[str, Any],
        bundle_sha256: str,
        trigger: str = "manual",
    ) -> str: ...

    def submit_steps(
        self, flow_run_id: str, submissions: Sequence[models.StepSubmission]
    ) -> list[models.SubmittedStep]: ...

    def watch_run(
        self, flow_run_id: str, after_event_id: int = 0
    ) -> Iterator[models.RunUpdate]: ...

    def finish_run(
        self,
        flow_run_id: str,
        succeeded: bool,
        result_json: str = "",
        error: models.ErrorInfo | None = None,
    ) -> str: ...

    def renew_runner_lease(self, flow_run_id: str, lease_s: float) -> str: ...

    def request_approval(
        self, flow_run_id: str, key: str, message: str = "", timeout_s: float = 0.0
    ) -> models.ApprovalState: ...


class ExecutingClient(RunnerClient, Protocol):
    """What resuming or retrying a stored run needs on top of running a new one."""

    def resume_run(self, run_id_or_prefix: str, *, here: bool = False) -> models.RunToExecute: ...

    def retry_run(self, run_id_or_prefix: str, *, here: bool = False) -> models.RunToExecute: ...

    def get_run(self, run_id_or_prefix: str) -> models.RunDetail: ...

    def download_bundle(self, sha256: str) -> bytes: ...


@dataclass(frozen=True)
class RunOutcome:
    """How a flow run ended: its final state and the body's result or error."""

    flow_run_id: str
    state: str
    result: Any = None
    error: models.ErrorInfo | None = None

    @property
    def succeeded(self) -> bool:
        return self.state == "COMPLETED"


def run_flow(
    client: RunnerClient,
    entrypoint: str,
    raw_params: Mapping[str, Any],
    *,
    on_update: UpdateCallback | None = None,
    trigger: str = "manual",
    max_bundle_bytes: int | None = None,
) -> RunOutcome:
    """Run the flow named by ``entrypoint`` ("path/to/flows.py:flow_name") to its end.

    Raises (before the run exists): ValidationError/NotFound for a bad entrypoint or
    parameters, BundleError for a bundle that is too large, ConnectionFailed and the other
    client errors. Once the run exists, a failing body does not raise: it is reported with
    FinishRun and returned in the outcome.
    """
    loaded = load_entrypoint(entrypoint)
    params = parse_params(loaded.flow.fn, raw_params)
    keys = _flow_keys(loaded.flow.seal)
    if max_bundle_bytes is None:
        bundle = pack_directory(loaded.root)
    else:
        bundle = pack_directory(loaded.root, max_size=max_bundle_bytes)
    client.ensure_bundle(bundle)
    limits = {"concurrency": loaded.flow.concurrency} if loaded.flow.concurrency else {}
    run_id = client.create_run(
        loaded.flow.name, entrypoint, params, bundle.sha256, trigger, **limits
    )
    token = getattr(client, "runner_tokens", {}).get(run_id, "")
    runner = _as_runner(client, token)
    if limits and wait_until_started(runner, run_id) != "RUNNING":
        return RunOutcome(run_id, runner.get_run(run_id).state)  # cancelled while waiting
    return execute_body(
        runner,
        run_id,
        loaded.flow.fn,
        params,
        on_update=on_update,
        seal=loaded.flow.seal,
        keys=keys,
        canceller=_canceller(client),
        flow_name=loaded.flow.name,
    )


def _canceller(client: Any) -> Canceller | None:
    return client if callable(getattr(client, "cancel_run", None)) else None


def _flow_keys(seal: str | None) -> KeyRing | None:
    """A sealed flow's keys, checked before anything is created; None: load when needed."""
    if seal is None:
        return None
    keys = KeyRing.from_env()
    keys.require(seal, "this flow runner")
    return keys


def _as_runner(client: Any, runner_token: str) -> Any:
    """The client the body runs with: least privilege, its run's own token when there is one."""
    with_token = getattr(client, "with_token", None)
    return with_token(runner_token) if runner_token and with_token is not None else client


def execute_body(
    client: RunnerClient,
    run_id: str,
    fn: Any,
    params: dict[str, Any],
    *,
    on_update: UpdateCallback | None = None,
    watch_after_event_id: int = 0,
    seal: str | None = None,
    keys: KeyRing | None = None,
    canceller: Canceller | None = None,
    flow_name: str | None = None,
    on_superseded: Callable[[str], None] | None = None,
    environment: str | None = None,
    typed_params: bool = False,
) -> RunOutcome:
    """Run the body of an existing run here: watch its steps, hold its runner lease, and
    report the body's outcome. ``seal`` is the flow's key group; ``keys`` default to
    ``MERIDIAN_SEAL_KEYS``. ``params`` are the run's JSON parameters, converted to the
    annotated types as the body starts (a value that does not convert fails the run), or the
    body's arguments themselves with ``typed_params`` (a subflow called in this process).
    ``environment``: the hosted runner's agent's, for ``meridian.context()``.

    A ``KeyboardInterrupt`` in the body cancels the run (with ``canceller``, the person's
    client: a runner token may not cancel) and waits, bounded, until its agents confirm; then
    :class:`RunInterrupted` is raised. A second ``KeyboardInterrupt`` during that wait gives
    up at once: :class:`RunInterrupted` with ``abandoned`` set, the run left resumable.
    """
    context = FlowContext(run_id, client, keys=keys, seal=seal)
    watcher = RunWatcher(client, context, on_update, after_event_id=watch_after_event_id)
    watcher.start()
    lease = RunnerLease(client, run_id, on_superseded=on_superseded)
    lease.start()
    interrupted: BaseException | None = None
    try:
        # meridian.context() in the body: a local runner has no environment.
        run_context = RunContext(
            run_id=run_id, flow_name=flow_name or None, environment=environment or None
        )
        with activate(context), flow_scope(run_context):
            succeeded, result, error, shared = _run_body(fn, params, typed=typed_params)
    except BaseException as exc:  # Ctrl-C or SystemExit
        stopper = canceller or _canceller(client)
        if isinstance(exc, KeyboardInterrupt) and stopper is not None:
            # Ctrl-C (or SIGTERM, as meridian run maps it): cancel the run, don't fail it.
            _cancel_interrupted(stopper, run_id, watcher, lease)
        # Otherwise report, then let it propagate.
        succeeded, result = False, None
        error, shared = error_info(exc, "cancelled"), error_info(exc, "cancelled", shared=True)
        interrupted = exc
    report = _sealed_report(_FinishReport(succeeded, result, error if seal else shared), context)
    if succeeded and not report.succeeded:  # the result could not be sealed
        succeeded, error = False, report.error
    try:
        state = _finish(client, run_id, report, watcher)
    finally:
        lease.stop()
        if not watcher.join(FINAL_UPDATE_WAIT_S):
            watcher.stop()
    if interrupted is not None:
        raise interrupted
    return RunOutcome(run_id, state, result if succeeded else None, error)


class Canceller(Protocol):
    def cancel_run(self, run_id_or_prefix: str, reason: str = "") -> models.CancelResult: ...


class RunInterrupted(KeyboardInterrupt):
    """The flow runner was interrupted: the run was cancelled (``state`` CANCELLED once every
    agent confirmed, else still CANCELLING), or left as it was (``abandoned``: a second
    interrupt; the run's lease lapses and it becomes resumable)."""

    def __init__(self, run_id: str, state: str, *, abandoned: bool = False) -> None:
        super().__init__(f"run {run_id} interrupted ({state or 'state unknown'})")
        self.run_id = run_id
        self.state = state
        self.abandoned = abandoned


def _cancel_interrupted(
    client: Canceller, run_id: str, watcher: RunWatcher, lease: RunnerLease
) -> NoReturn:
    """Cancel the run after an interrupt and wait for its agents' confirmation (the watch
    stream ends with the run's final state); a second interrupt gives up at once."""
    try:
        try:
            state = client.cancel_run(run_id, CANCEL_REASON).state
        except ConflictError:  # the run ended already (e.g. finished just now)
            state = ""
        if state != "CANCELLED" and watcher.join(CANCEL_CONFIRM_WAIT_S):
            state = watcher.run_state or state
    except KeyboardInterrupt:
        lease.abandon()
        watcher.abandon()
        raise RunInterrupted(run_id, "", abandoned=True) from None
    except MeridianError as exc:
        log.warning("could not cancel run %s after the interrupt: %s", run_id, exc)
        state = watcher.run_state
    lease.stop()
    watcher.stop()
    raise RunInterrupted(run_id, state or watcher.run_state)


class RunnerLease:
    """Renews the run's runner lease in the background while the body runs (also while it
    waits for an approval: a PAUSED run is alive as long as its runner is).

    If this process dies the lease lapses and the control plane marks the run CRASHED; its
    steps keep running and ``meridian runs resume`` continues it. A renewal that fails (the
    control plane restarting) is simply tried again at the next tick.
    """

    def __init__(
        self,
        client: RunnerClient,
        run_id: str,
        *,
        interval_s: float = RUNNER_LEASE_RENEW_S,
        lease_s: float = RUNNER_LEASE_S,
        on_superseded: Callable[[str], None] | None = None,
    ) -> None:
        self._client = client
        # A hosted runner (decision 0018) whose run was handed to a newer runner epoch is
        # told so here; it must stop without touching the run (``meridian.flowexec``).
        self._on_superseded = on_superseded
        self._run_id = run_id
        self._interval_s = interval_s
        self._lease_s = lease_s
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"meridian-lease-{run_id}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(2.0)

    def abandon(self) -> None:
        """Stop renewing without waiting: the lease lapses and the run becomes CRASHED."""
        self._stopping.set()

    def _run(self) -> None:
        # Renew at once: until then the run holds the control plane's initial lease (60 s),
        # and a runner that dies early should be noticed within its own, shorter lease.
        while True:
            try:
                self._client.renew_runner_lease(self._run_id, self._lease_s)
            except ConflictError as exc:
                if self._on_superseded is not None and is_superseded_error(exc):
                    self._on_superseded(str(exc))
                    return
                log.debug("runner lease renewal failed (will retry): %s", exc)
            except MeridianError as exc:
                log.debug("runner lease renewal failed (will retry): %s", exc)
            if self._stopping.wait(self._interval_s):
                return


SUPERSEDED = "superseded by runner epoch"


def is_superseded_error(exc: BaseException) -> bool:
    """Whether the control plane refused a call because a newer runner took the run."""
    return isinstance(exc, ConflictError) and SUPERSEDED in str(exc)


def resume_flow(
    client: ExecutingClient,
    run_id: str,
    *,
    on_update: UpdateCallback | None = None,
    cache_dir: Path | None = None,
    here: bool = False,
) -> RunOutcome:
    """Continue a CRASHED/FAILED/CANCELLED run from the point of failure: the body runs
    again and every step run that already COMPLETED returns its stored result.

    A hosted run (a deployment's, ``run --remote``) goes back to a hosted runner and this
    follows it to its end; ``here`` runs its body in this process instead."""
    _refuse_subflow_child(client, run_id, "resume")
    target = client.resume_run(run_id, here=here)
    if target.hosted:
        return _follow_hosted(client, target, on_update)
    return _execute_stored(client, target, on_update, cache_dir, target.watch_after_event_id)


def retry_flow(
    client: ExecutingClient,
    run_id: str,
    *,
    on_update: UpdateCallback | None = None,
    cache_dir: Path | None = None,
    here: bool = False,
) -> RunOutcome:
    """Run the same flow version with the same parameters again, as a new run: hosted like
    the original (followed to its end) unless ``here``."""
    _refuse_subflow_child(client, run_id, "retry")
    target = client.retry_run(run_id, here=here)
    if target.hosted:
        return _follow_hosted(client, target, on_update)
    return _execute_stored(client, target, on_update, cache_dir, 0)


def _refuse_subflow_child(client: ExecutingClient, run_id: str, action: str) -> None:
    """A subflow's child is driven by its parent's body (its entrypoint is a function in the
    parent's bundle, not a flow file): refuse before touching it and name the run to act on.
    A deployment's child (key ``deployment:...``) is a hosted run of its own: allowed."""
    detail = client.get_run(run_id)
    parent = detail.parent_run_id
    if parent and not detail.parent_key.startswith("deployment:"):
        raise ConflictError(
            f"run {detail.flow_run_id} is a subflow of run {parent}; {action} the parent run "
            f"{parent} (its body calls the subflow again)"
        )


def _follow_hosted(
    client: ExecutingClient, target: models.RunToExecute, on_update: UpdateCallback | None
) -> RunOutcome:
    """Follow a run a hosted runner executes until it ends (Ctrl-C stops following only:
    the run goes on). The outcome's result is the stored result as JSON (None when it is
    sealed or stayed at its site: ``runs show`` and ``ResultRef.load`` read those)."""
    for update in client.watch_run(target.flow_run_id, target.watch_after_event_id):
        if on_update is not None:
            on_update(update)
    detail = client.get_run(target.flow_run_id)
    result: Any = None
    text = detail.result_json
    if detail.state == "COMPLETED" and text and sealed_envelope(text) is None:
        try:
            result = json.loads(text)
        except ValueError:
            result = None
    return RunOutcome(detail.flow_run_id, detail.state, result, detail.error)


def _execute_stored(
    client: ExecutingClient,
    target: models.RunToExecute,
    on_update: UpdateCallback | None,
    cache_dir: Path | None,
    watch_after_event_id: int,
    *,
    bundle_root: Path | None = None,
    on_superseded: Callable[[str], None] | None = None,
    environment: str | None = None,
) -> RunOutcome:
    """Run a stored run's body from its own bundle (fetched, or ``bundle_root`` when the
    caller has it unpacked already: a hosted runner's agent fetched it; ``environment`` is
    that agent's)."""
    # The run's own code bundle, not whatever is on disk now: resume runs the same code.
    root = bundle_root or fetch_bundle(
        client, target.bundle_sha256, cache_dir or default_cache_dir()
    )
    file_part, flow_name = split_entrypoint(target.entrypoint)
    entry = f"{root / file_part.name}:{flow_name}" if flow_name else str(root / file_part.name)
    loaded = load_entrypoint(entry)
    params = json.loads(target.parameters_json or "{}")
    runner = _as_runner(client, target.runner_token)
    # A retried or resumed @flow(concurrency=...) run waits in its limits' lines first.
    if target.state == "PENDING" and wait_until_started(runner, target.flow_run_id) != "RUNNING":
        return RunOutcome(target.flow_run_id, runner.get_run(target.flow_run_id).state)
    return execute_body(
        runner,
        target.flow_run_id,
        loaded.flow.fn,
        params,
        on_update=on_update,
        watch_after_event_id=watch_after_event_id,
        seal=loaded.flow.seal,
        canceller=_canceller(client),
        flow_name=loaded.flow.name,
        on_superseded=on_superseded,
        environment=environment,
    )


def default_cache_dir() -> Path:
    return Path(os.environ.get("MERIDIAN_CACHE_DIR", Path.home() / ".cache" / "meridian"))


def fetch_bundle(client: ExecutingClient, sha256: str, cache_dir: Path) -> Path:
    """Download and unpack a bundle once per content hash; returns its directory."""
    dest = cache_dir / "bundles" / sha256
    if dest.is_dir():
        return dest
    data = client.download_bundle(sha256)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{sha256[:12]}-", dir=dest.parent))
    shutil.rmtree(staging)
    unpack_bundle(data, staging, expected_sha256=sha256)
    try:
        staging.rename(dest)
    except OSError:  # another runner unpacked it first
        shutil.rmtree(staging, ignore_errors=True)
    return dest


_BodyEnd = tuple[bool, Any, models.ErrorInfo | None, models.ErrorInfo | None]


def _run_body(fn: Any, params: dict[str, Any], *, typed: bool = False) -> _BodyEnd:
    """(succeeded, result, error as shown here, error as the control plane may store it)."""
    try:
        # Converted inside the try: a parameter that does not suit its annotation (a pydantic
        # model's own validation) fails the run, reported like any error of the body.
        arguments = params if typed else call_arguments(fn, params)
        # A stored result (ResultRef) in the flow's result is reported as its marker, and a
        # parameter given as one (-p NAME=@result:RUN/STEP) arrives as a ResultRef.
        result = with_markers(fn(**with_result_refs(arguments)))
    except Exception as exc:
        return False, None, error_info(exc), error_info(exc, shared=True)
    problem = describe_non_json(result)
    if problem:
        error = models.ErrorInfo(
            error_class="permanent",
            type="meridian.core.errors.ValidationError",
            message=f"the flow's return value is not JSON-serializable (got {problem})",
        )
        return False, None, error, error
    return True, result, None, None


@dataclass(frozen=True)
class _FinishReport:
    """What FinishRun sends: the result's JSON text (sealed or not) and the error."""

    succeeded: bool
    result: Any
    error: models.ErrorInfo | None
    result_json: str = ""


def _sealed_report(report: _FinishReport, context: FlowContext) -> _FinishReport:
    """The report of a sealed flow with its result and error texts sealed; a report that
    cannot be sealed (no key, too large) becomes a failure saying why, without plaintext."""
    result_json = dumps(report.result) if report.succeeded else ""
    group = context.seal
    if group is None:
        return dataclasses.replace(report, result_json=result_json)
    run_id = context.flow_run_id
    try:
        keys = context.keys()
        sealed_json = seal_text(keys, group, result_json, RESULT, run_id, FLOW_STEP)
        error = report.error
        if error is not None:
            error = seal_flow_error(keys, group, run_id, error)
    except SealError as exc:
        return _FinishReport(False, None, error_info(exc))
    return dataclasses.replace(report, result_json=sealed_json, error=error)


def _finish(client: RunnerClient, run_id: str, report: _FinishReport, watcher: RunWatcher) -> str:
    try:
        return client.finish_run(run_id, report.succeeded, report.result_json, report.error)
    except ConflictError:
        # The run was ended elsewhere (e.g. cancelled) while the body ran: report that state.
        if watcher.run_state:
            return watcher.run_state
        raise


def error_info(
    exc: BaseException, error_class: str | None = None, *, shared: bool = False
) -> models.ErrorInfo:
    """Describe a flow-body exception for FinishRun.

    A ``StepFailed`` that escaped the body keeps the step's error class and appends the
    remote traceback, so the run record shows both where the flow gave up and why the step
    failed. ``shared``: the version the control plane may store in plaintext, without the
    opened error texts of sealed steps.
    """
    if error_class is None:
        error_class = "permanent"
        if isinstance(exc, StepCancelled):
            error_class = "cancelled"
        elif isinstance(exc, StepFailed) and exc.error_class:
            error_class = exc.error_class
    text = "".join(traceback.format_exception(exc))
    if isinstance(exc, StepFailed) and exc.remote_traceback:
        text += f"\nRemote traceback of step {exc.step_key}:\n{exc.remote_traceback}"
    message = _safe_str(exc)
    failures = sealed_failures(exc) if shared else []
    if failures:  # before truncation, so that no fragment escapes the masking
        text, message = mask_opened_texts(text, failures), mask_opened_texts(message, failures)
    if len(text) > MAX_TRACEBACK_CHARS:
        text = "...[traceback truncated]\n" + text[-MAX_TRACEBACK_CHARS:]
    return models.ErrorInfo(
        error_class=error_class,
        type=_qualified(type(exc)),
        message=message[:MAX_MESSAGE_CHARS],
        traceback=text,
        type_mro=tuple(_qualified(c) for c in type(exc).__mro__ if c is not object),
    )


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # a broken __str__ must not hide the failure itself
        return f"<unprintable {type(exc).__name__}>"
