"""The per-run state that step objects use while a flow body runs.

``FlowContext`` owns the deterministic key counter, the futures of submitted step runs and
the batching of submissions into ``SubmitSteps`` calls. The flow runner activates one context
(a ``contextvars`` variable) around the flow body and feeds it step outcomes from its watch
stream; outside a flow no context is active and steps run in-process.

It also holds the approvals the body waits for (``ApprovalWaits``, resolved from the same
watch stream as step outcomes) and their call counter (``approve("deploy")`` -> ``deploy#n``).

It holds the run's sealing state too: the flow's default key group, the keys (read from
``MERIDIAN_SEAL_KEYS`` the first time a sealed step needs them) and which step keys were
submitted sealed, so that their results are opened, and required to be sealed, on the way back.

A step whose result stayed at its site resolves to a ``meridian.ResultRef`` bound to this run
and step, downloadable through the runner's client (``ResultRef.load``).
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from typing import Protocol, cast

from meridian import models
from meridian.core import resultref, sealing
from meridian.core.errors import (
    ConflictError,
    SealError,
    StepCancelled,
    StepFailed,
    ValidationError,
)
from meridian.core.sealing import KeyRing
from meridian.sdk._approvals import ApprovalWaits
from meridian.sdk._sealed import open_outcome
from meridian.sdk.futures import StepFuture
from meridian.sdk.results import ResultFetcher, ResultRef, ResultSource

# One SubmitSteps RPC carries at most this many calls (the control plane's limit per request:
# a 10,000-item map is one RPC) and stays well below the 16 MiB message limit when inputs are
# large. The calls of a map share one spec, sent once per RPC (ControlClient.submit_steps).
SUBMIT_CHUNK_SIZE = 10_000
SUBMIT_CHUNK_BYTES = 8 * 1024 * 1024
# What a call adds to a request besides its inputs and key (field tags, lengths), and what
# a spec adds (sent once per chunk for a map, once per call otherwise).
_CALL_OVERHEAD = 16
_SPEC_OVERHEAD = 512

_COMPLETED_STATES = frozenset({"COMPLETED", "CACHED"})


class StepSubmitter(Protocol):
    """The part of ``ControlClient`` a flow context needs."""

    def submit_steps(
        self, flow_run_id: str, submissions: Sequence[models.StepSubmission]
    ) -> list[models.SubmittedStep]: ...


class FlowContext:
    """Step bookkeeping of one running flow body."""

    def __init__(
        self,
        flow_run_id: str,
        submitter: StepSubmitter,
        *,
        chunk_size: int = SUBMIT_CHUNK_SIZE,
        chunk_bytes: int = SUBMIT_CHUNK_BYTES,
        keys: KeyRing | None = None,
        seal: str | None = None,
    ) -> None:
        self.flow_run_id = flow_run_id
        self.seal = seal  # the flow's default key group
        self._keys = keys
        self._submitter = submitter
        self._chunk_size = chunk_size
        self._chunk_bytes = chunk_bytes
        self._lock = threading.Lock()
        self._calls: dict[str, int] = {}
        self._futures: dict[str, StepFuture] = {}
        # Outcomes seen on the watch stream before this process registered the key (a
        # replayed run, or an update racing the SubmitSteps answer).
        self._early: dict[str, models.StepOutcome] = {}
        self._closed: Callable[[StepFuture], BaseException] | None = None
        self._sealed: dict[str, str] = {}  # step key -> key group of its sealed inputs
        self._approval_calls: dict[str, int] = {}
        self.approvals = ApprovalWaits()

    @property
    def client(self) -> StepSubmitter:
        """The runner's client (its run's own token); ``approve`` asks through it."""
        return self._submitter

    def next_call_number(self, step_name: str) -> int:
        """Count a call of ``step_name``; the n-th call (1-based) gets key ``name#n``."""
        with self._lock:
            number = self._calls.get(step_name, 0) + 1
            self._calls[step_name] = number
            return number

    def next_approval_number(self, name: str) -> int:
        """Count an ``approve(name)``: approvals are numbered apart from steps."""
        with self._lock:
            number = self._approval_calls.get(name, 0) + 1
            self._approval_calls[name] = number
            return number

    # -- sealing ---------------------------------------------------------------------------

    def keys(self) -> KeyRing:
        """The runner's sealing keys (SealError for a bad ``MERIDIAN_SEAL_KEYS``)."""
        with self._lock:
            if self._keys is None:
                self._keys = KeyRing.from_env()
            return self._keys

    def seal_group(self, step_seal: str | bool | None) -> str | None:
        """The key group a step call uses: its own, else the flow's; None when not sealed."""
        if step_seal is False:
            return None
        return step_seal if isinstance(step_seal, str) else self.seal

    def seal_inputs(self, group: str, key: str, inputs_json: str) -> str:
        """Seal one call's inputs; its result must then come back sealed with ``group``."""
        sealed = sealing.seal_inputs(self.keys(), group, inputs_json, self.flow_run_id, key)
        with self._lock:
            self._sealed.setdefault(key, group)
        return sealed

    def _resolve(self, future: StepFuture, outcome: models.StepOutcome) -> None:
        with self._lock:
            group = self._sealed.get(outcome.key, "")
        self._resolve_opened(future, outcome, group)

    def _resolve_opened(self, future: StepFuture, outcome: models.StepOutcome, group: str) -> None:
        """Resolve ``future``, opening the outcome first when its inputs were sealed."""
        if group:
            try:
                outcome = open_outcome(self.keys(), outcome, self.flow_run_id, group)
            except SealError as exc:
                future._set_exception(
                    StepFailed(outcome.key, "permanent", "meridian.core.errors.SealError", str(exc))
                )
                return
        apply_outcome(
            future,
            outcome,
            sealed_with=group,
            flow_run_id=self.flow_run_id,
            source=self.result_source(),
        )

    def result_source(self) -> ResultSource | None:
        """Where this run's result references are downloaded from: the runner's client."""
        fetcher = self._submitter
        if not callable(getattr(fetcher, "fetch_result", None)):
            return None
        return ResultSource(cast(ResultFetcher, fetcher), self.keys)

    # -- submission --------------------------------------------------------------------------

    def submit(self, submissions: Sequence[models.StepSubmission]) -> list[StepFuture]:
        """Register futures and send the submissions in as few RPCs as the limits allow.

        A key already submitted in this run returns the existing future without a new RPC:
        the control plane treats a resubmitted key as the same step run anyway.
        """
        futures: list[StepFuture] = []
        fresh: list[models.StepSubmission] = []
        early: list[tuple[StepFuture, models.StepOutcome]] = []
        with self._lock:
            for sub in submissions:
                future = self._futures.get(sub.key)
                if future is None:
                    future = StepFuture(sub.key, sub.spec.name)
                    self._futures[sub.key] = future
                    fresh.append(sub)
                    if sub.key in self._early:
                        early.append((future, self._early.pop(sub.key)))
                futures.append(future)
        for future, outcome in early:
            self._resolve(future, outcome)
        closed = self._closed
        if closed is not None:
            # Nothing will ever resolve these: the run ended or its stream is gone for good.
            for future in futures:
                future._set_exception(closed(future))
            return futures
        self._send(fresh)
        return futures

    def _send(self, fresh: list[models.StepSubmission]) -> None:
        chunks = list(self._chunks(fresh))
        for index, chunk in enumerate(chunks):
            try:
                self._send_chunk(chunk)
            except BaseException:
                # Nothing from this chunk on reached the control plane: forget those keys so
                # a retry in the flow body submits them again.
                with self._lock:
                    for sub in (s for c in chunks[index:] for s in c):
                        self._futures.pop(sub.key, None)
                raise

    def _send_chunk(self, chunk: list[models.StepSubmission]) -> None:
        """Submit one chunk; ask again for the keys whose stored outcome did not fit the
        answer (a resumed map with large results), until every ended call has its outcome."""
        while chunk:
            answers = self._submitter.submit_steps(self.flow_run_id, chunk)
            ended: list[tuple[StepFuture, models.StepOutcome]] = []
            omitted: set[str] = set()
            with self._lock:
                for answer in answers:
                    if answer.outcome_omitted:
                        omitted.add(answer.key)
                    future = self._futures.get(answer.key)
                    if future is not None:
                        future.step_run_id = answer.step_run_id
                        if answer.outcome is not None:
                            ended.append((future, answer.outcome))
            # A resumed run: the step had already ended, its stored outcome is the answer.
            for future, outcome in ended:
                if not future.done():
                    self._resolve(future, outcome)
            if omitted and not ended:  # the control plane always answers at least one
                raise ConflictError(
                    f"the control plane answered none of {len(omitted)} stored outcomes"
                )
            chunk = [sub for sub in chunk if sub.key in omitted]

    def _chunks(self, subs: list[models.StepSubmission]) -> Iterator[list[models.StepSubmission]]:
        """Consecutive calls in chunks bounded by count and by bytes on the wire."""
        chunk: list[models.StepSubmission] = []
        size = 0
        for sub in subs:
            call_size = (
                _utf8_len(sub.inputs_json)
                + _utf8_len(sub.key)
                + len(sub.cache_key)
                + sum(_utf8_len(ref) + _CALL_OVERHEAD for ref in sub.input_refs_json)
                + _CALL_OVERHEAD
            )
            spec_size = len(sub.spec.options_json) + _SPEC_OVERHEAD
            grows = call_size if chunk and chunk[-1].spec is sub.spec else call_size + spec_size
            if chunk and (len(chunk) >= self._chunk_size or size + grows > self._chunk_bytes):
                yield chunk
                chunk, size, grows = [], 0, call_size + spec_size
            chunk.append(sub)
            size += grows
        if chunk:
            yield chunk

    def resolve(self, outcome: models.StepOutcome) -> None:
        """Resolve the future of ``outcome.key`` (or keep the outcome until it is submitted)."""
        self.resolve_many([outcome])

    def resolve_many(self, outcomes: Sequence[models.StepOutcome]) -> None:
        """Resolve the futures of a batch of outcomes in one pass (one lock round); outcomes
        of keys not submitted yet are kept until they are."""
        ready: list[tuple[StepFuture, models.StepOutcome, str]] = []
        with self._lock:
            for outcome in outcomes:
                future = self._futures.get(outcome.key)
                if future is None:
                    self._early[outcome.key] = outcome
                else:
                    ready.append((future, outcome, self._sealed.get(outcome.key, "")))
        for future, outcome, group in ready:
            self._resolve_opened(future, outcome, group)

    def close(self, make_error: Callable[[StepFuture], BaseException]) -> None:
        """No more outcomes will arrive: fail pending and later futures with ``make_error``."""
        with self._lock:
            self._closed = make_error
            pending = [f for f in self._futures.values() if not f.done()]
        for future in pending:
            future._set_exception(make_error(future))


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode())


def apply_outcome(
    future: StepFuture,
    outcome: models.StepOutcome,
    *,
    sealed_with: str = "",
    flow_run_id: str = "",
    source: ResultSource | None = None,
) -> None:
    """Resolve ``future`` from a terminal step outcome (already opened if it was sealed); a
    result that stayed at its site resolves to a :class:`ResultRef` of ``flow_run_id``."""
    if outcome.state in _COMPLETED_STATES and outcome.result_ref_json:
        try:
            ref = resultref.ResultRef.from_json(outcome.result_ref_json)
        except ValidationError as exc:
            message = f"bad result reference: {exc}"
            future._set_exception(StepFailed(outcome.key, "infrastructure", "ValueError", message))
            return
        future._set_result(ResultRef.of(ref, flow_run_id, outcome.key, source))
        return
    if outcome.state in _COMPLETED_STATES:
        try:
            value = json.loads(outcome.result_json) if outcome.result_json else None
        except ValueError as exc:
            future._set_exception(
                StepFailed(outcome.key, "infrastructure", "ValueError", f"bad result JSON: {exc}")
            )
            return
        future._set_result(value)
        return
    error = outcome.error or models.ErrorInfo(
        error_class="cancelled" if outcome.state == "CANCELLED" else "infrastructure",
        type="",
        message=f"step run ended in state {outcome.state or 'UNKNOWN'}",
    )
    cls = StepCancelled if outcome.state == "CANCELLED" else StepFailed
    future._set_exception(
        cls(
            outcome.key,
            error.error_class,
            error.type,
            error.message,
            error.traceback,
            sealed_with=sealed_with,
        )
    )


_current: ContextVar[FlowContext | None] = ContextVar("meridian_flow_context", default=None)


def current_context() -> FlowContext | None:
    """The context of the flow body running in this thread/task, if any."""
    return _current.get()


@contextlib.contextmanager
def activate(context: FlowContext) -> Iterator[FlowContext]:
    """Make ``context`` current for the duration of the ``with`` block."""
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)
