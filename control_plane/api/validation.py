"""Edge validation of control API requests: every field bounded, every message actionable."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from control_plane.api.json_schema import first_problem
from control_plane.orchestration.limits import acquisition_order
from control_plane.orchestration.values import StepSubmission
from control_plane.usecases.agents import HelloIn
from meridian.core.convert import error_from_proto, spec_from_proto
from meridian.core.errorinfo import ErrorInfo
from meridian.core.errors import SelectorError, ValidationError
from meridian.core.resultref import (
    MAX_INLINE_THRESHOLD_BYTES,
    REF_MARKER,
    ResultRef,
    find_ref_markers,
    store_name_problem,
)
from meridian.core.sealing import sealed_inputs_problem
from meridian.core.secrets import check_secret_references
from meridian.core.selectors import parse_selector, validate_key, validate_value
from meridian.core.serializers import KNOWN_SERIALIZERS
from meridian.core.spec import DEFAULT_SCHEDULE_TIMEOUT_S, Isolation, OnAgentLost, StepSpec
from meridian.core.states import RunState
from protos.meridian.v1 import common_pb2, control_pb2

MAX_STEPS_PER_REQUEST = 5000
# Calls per request, batches included: a 10,000-item map is one request, and one request is
# one transaction that holds SQLite's single writer for a bounded time.
MAX_CALLS_PER_REQUEST = 10_000
MAX_KEY = 512
MAX_INPUTS_BYTES = 4 * 1024 * 1024
MAX_OPTIONS_BYTES = 64 * 1024
MAX_STEP_LIMITS = 8  # named concurrency limits one step may take
MAX_PARAMETERS_BYTES = 1024 * 1024
MAX_RETRIES = 1000
MAX_SECONDS = 30 * 24 * 3600.0
PROVIDER_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
IDENTIFIER_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_.<>]{0,511}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
# A cache key is a digest the SDK computes (meridian.core.cachekey: "ck2-<sha256 hex>"); the
# bound leaves room for other versions without letting a key carry arbitrary text.
CACHE_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
MAX_CACHE_EXPIRATION_S = 3650 * 24 * 3600.0
# Stored results a call's inputs may name (each at most MAX_REF_JSON_LENGTH characters), and
# a request's calls together: each is checked against the store before anything is stored.
MAX_INPUT_REFS_PER_CALL = 1000
MAX_INPUT_REFS_PER_REQUEST = 10_000


def validate_create_run(request: control_pb2.CreateRunRequest) -> None:
    if not request.flow_name or len(request.flow_name) > 255:
        raise ValidationError("flow_name must be 1-255 characters")
    if len(request.entrypoint) > 1024 or len(request.trigger) > 64:
        raise ValidationError("entrypoint (max 1024) or trigger (max 64) too long")
    if request.parent_key and not request.parent_run_id:
        raise ValidationError("parent_key needs a parent_run_id")
    if request.parent_run_id and not 1 <= len(request.parent_key) <= MAX_KEY:
        raise ValidationError(f"a subflow needs a parent_key of 1-{MAX_KEY} characters")
    # A subflow may leave the bundle empty: it runs the parent's code.
    if not SHA256.match(request.bundle_sha256) and not (
        request.parent_run_id and not request.bundle_sha256
    ):
        raise ValidationError("bundle_sha256 must be 64 lowercase hex characters")
    if len(request.parameters_json) > MAX_PARAMETERS_BYTES:
        raise ValidationError(f"parameters exceed {MAX_PARAMETERS_BYTES} bytes")
    if request.parameters_json:
        value = _json(request.parameters_json, "parameters_json")
        if not isinstance(value, dict):
            raise ValidationError("parameters_json must be a JSON object")
    _check_concurrency(request.concurrency, "the flow")


@dataclass(frozen=True)
class Submissions:
    """A validated ``SubmitSteps`` request: every call, the single submissions first, then each
    batch's calls in order (a batch's calls share one ``StepSpec`` object); ``batch_sizes``
    shapes the answer."""

    calls: list[StepSubmission]
    singles: int
    batch_sizes: list[int]

    def specs(self) -> list[tuple[str, StepSpec]]:
        """Each distinct spec once, with the key of its first call (to name it in errors)."""
        seen: dict[int, tuple[str, StepSpec]] = {}
        for call in self.calls:
            seen.setdefault(id(call.spec), (call.key, call.spec))
        return list(seen.values())


def validate_submissions(request: control_pb2.SubmitStepsRequest) -> Submissions:
    """Every call of the request checked before anything is stored: counts, sizes, keys unique
    within the request, inputs' shape; a batch's spec is checked once."""
    if not request.flow_run_id:
        raise ValidationError("flow_run_id is required")
    if not request.steps and not request.batches:
        raise ValidationError("no steps to submit")
    if len(request.steps) > MAX_STEPS_PER_REQUEST:
        raise ValidationError(f"at most {MAX_STEPS_PER_REQUEST} steps per request")
    total = len(request.steps) + sum(len(b.keys) for b in request.batches)
    if total > MAX_CALLS_PER_REQUEST:
        raise ValidationError(
            f"{total} step calls in one request, above the limit of {MAX_CALLS_PER_REQUEST}; "
            "split them over several requests"
        )
    refs = len([r for s in request.steps for r in s.input_refs_json])
    refs += sum(len(i.ref_json) for b in request.batches for i in b.input_refs)
    if refs > MAX_INPUT_REFS_PER_REQUEST:
        raise ValidationError(
            f"the request's inputs name {refs} stored results, above the limit of "
            f"{MAX_INPUT_REFS_PER_REQUEST}; split the calls over several requests"
        )
    calls = [_submission(s) for s in request.steps]
    sizes = []
    for number, batch in enumerate(request.batches, 1):
        calls.extend(_batch(batch, number))
        sizes.append(len(batch.keys))
    seen: set[str] = set()
    for call in calls:
        if call.key in seen:
            raise ValidationError(f"step key {call.key!r} appears twice in one request")
        seen.add(call.key)
    return Submissions(calls, len(request.steps), sizes)


def _batch(batch: control_pb2.StepBatch, number: int) -> list[StepSubmission]:
    where = f"batch {number}"
    if not batch.keys:
        raise ValidationError(f"{where} has no keys")
    if len(batch.inputs_json) != len(batch.keys):
        raise ValidationError(
            f"{where} has {len(batch.keys)} keys but {len(batch.inputs_json)} inputs; "
            "give one inputs_json per key"
        )
    if batch.cache_keys and len(batch.cache_keys) != len(batch.keys):
        raise ValidationError(
            f"{where} has {len(batch.keys)} keys but {len(batch.cache_keys)} cache keys; "
            "give none or one per key"
        )
    if batch.input_refs and len(batch.input_refs) != len(batch.keys):
        raise ValidationError(
            f"{where} has {len(batch.keys)} keys but {len(batch.input_refs)} input reference "
            "lists; give none or one per key"
        )
    spec = validate_spec(batch.spec, f"{where} (step {batch.keys[0][:MAX_KEY]!r})")
    cache_keys = list(batch.cache_keys) or [""] * len(batch.keys)
    refs: list[Sequence[str]] = [i.ref_json for i in batch.input_refs] or [()] * len(batch.keys)
    calls = zip(batch.keys, batch.inputs_json, cache_keys, refs, strict=True)
    return [
        _call(key, inputs, spec, cache_key, batch.cache_expires_after_s, input_refs)
        for key, inputs, cache_key, input_refs in calls
    ]


def _submission(step: control_pb2.StepSubmission) -> StepSubmission:
    _check_key(step.key)
    spec = validate_spec(step.spec, f"step {step.key!r}")
    return _call(
        step.key,
        step.inputs_json,
        spec,
        step.cache_key,
        step.cache_expires_after_s,
        step.input_refs_json,
    )


def _check_key(key: str) -> None:
    if not key or len(key) > MAX_KEY:
        raise ValidationError(f"step key must be 1-{MAX_KEY} characters")


def _call(
    key: str,
    inputs_json: str,
    spec: StepSpec,
    cache_key: str = "",
    expires_after_s: float = 0.0,
    input_refs: Sequence[str] = (),
) -> StepSubmission:
    _check_key(key)
    where = f"step {key!r}"
    _check_cache(where, cache_key, expires_after_s)
    if len(inputs_json) > MAX_INPUTS_BYTES:
        raise ValidationError(
            f"{where}: inputs are {len(inputs_json)} bytes, above the limit of "
            f"{MAX_INPUTS_BYTES}; pass a reference (a path or URL) instead of the data"
        )
    inputs = _json(inputs_json or '{"args": [], "kwargs": {}}', f"{where}: inputs_json")
    if not isinstance(inputs, dict) or set(inputs) - {"args", "kwargs", "sealed"}:
        raise ValidationError(f'{where}: inputs_json must be {{"args": [...], "kwargs": {{...}}}}')
    # Inputs sealed by the flow runner (meridian.core.sealing): stored and passed on as they are,
    # only the envelope's shape can be checked here; the key never reaches the control plane.
    problem = sealed_inputs_problem(inputs) if "sealed" in inputs else None
    if problem:
        raise ValidationError(f"{where}: inputs_json: {problem}")
    if cache_key and "sealed" in inputs:
        # A sealed result is bound to its run (docs/user-guide.md): another run cannot open it.
        raise ValidationError(f"{where}: a step with sealed inputs cannot be cached")
    refs = _input_refs(where, input_refs)
    if "sealed" not in inputs and REF_MARKER in inputs_json:
        _check_markers_listed(where, inputs, refs)
    return StepSubmission(
        key=key,
        spec=spec,
        inputs_json=inputs_json or json.dumps(inputs),
        cache_key=cache_key,
        cache_expires_after_s=expires_after_s if cache_key else 0.0,
        input_refs=refs,
    )


def _input_refs(where: str, texts: Sequence[str]) -> tuple[ResultRef, ...]:
    """The call's input references, each parsed strictly, each distinct one once (whether
    the control plane recorded them is the use case's check)."""
    if len(texts) > MAX_INPUT_REFS_PER_CALL:
        raise ValidationError(
            f"{where}: its inputs name {len(texts)} stored results, above the limit of "
            f"{MAX_INPUT_REFS_PER_CALL}"
        )
    refs: dict[str, ResultRef] = {}
    for number, text in enumerate(texts, 1):
        try:
            ref = ResultRef.from_json(text)
        except ValidationError as exc:
            raise ValidationError(f"{where}: input reference {number}: {exc}") from None
        refs.setdefault(ref.to_json(), ref)
    return tuple(refs.values())


def _check_markers_listed(where: str, inputs: Any, refs: tuple[ResultRef, ...]) -> None:
    """Every reference marker in (unsealed) inputs must be listed in ``input_refs_json``:
    the agent materializes exactly the listed ones, and only listed ones are checked."""
    try:
        named = find_ref_markers(inputs)
    except ValidationError as exc:
        raise ValidationError(f"{where}: inputs_json: {exc}") from None
    listed = set(refs)
    for ref in named:
        if ref not in listed:
            raise ValidationError(
                f"{where}: inputs_json names a stored result (sha256 {ref.sha256[:12]}…) that "
                "input_refs_json does not list; list every reference the inputs name"
            )


def _check_cache(where: str, cache_key: str, expires_after_s: float) -> None:
    if cache_key and not CACHE_KEY.match(cache_key):
        raise ValidationError(
            f"{where}: cache_key must be 1-128 characters of letters, digits and '_.:-', "
            f"starting with a letter or digit (got {len(cache_key)} characters)"
        )
    if not (math.isfinite(expires_after_s) and 0.0 <= expires_after_s <= MAX_CACHE_EXPIRATION_S):
        raise ValidationError(
            f"{where}: cache_expires_after_s must be between 0 (no expiration) and "
            f"{MAX_CACHE_EXPIRATION_S:.0f} seconds, got {expires_after_s!r}"
        )


def validate_spec(proto: common_pb2.StepSpec, where: str) -> StepSpec:
    """The submitted spec, checked field by field and normalised (canonical selector text;
    0 for backoff or schedule timeout means "the default")."""
    spec = spec_from_proto(proto)
    if not spec.name or len(spec.name) > 255:
        raise ValidationError(f"{where}: name must be 1-255 characters")
    for field, value in (("module", spec.module), ("function", spec.function)):
        if not IDENTIFIER_PATH.match(value):
            raise ValidationError(f"{where}: {field} {value!r} is not a dotted Python name")
    if not PROVIDER_NAME.match(spec.provider):
        raise ValidationError(f"{where}: provider {spec.provider!r} is not a provider name")
    try:
        target = str(parse_selector(spec.target))
    except SelectorError as exc:
        raise ValidationError(f"{where}: {exc}") from exc
    if not 0 <= spec.retries <= MAX_RETRIES:
        raise ValidationError(f"{where}: retries must be between 0 and {MAX_RETRIES}")
    for field in ("retry_delay_s", "timeout_s", "schedule_timeout_s", "lost_after_s"):
        value = getattr(spec, field)
        if not math.isfinite(value) or not 0 <= value <= MAX_SECONDS:
            raise ValidationError(f"{where}: {field} must be between 0 and {MAX_SECONDS:g}")
    if not math.isfinite(spec.retry_backoff) or not 1 <= (spec.retry_backoff or 1) <= 100:
        raise ValidationError(f"{where}: retry_backoff must be between 1 and 100")
    if not 0 <= spec.retry_jitter <= 1:
        raise ValidationError(f"{where}: retry_jitter must be between 0 and 1")
    if spec.on_agent_lost not in set(OnAgentLost):
        raise ValidationError(f"{where}: on_agent_lost must be 'retry', 'fail' or 'wait'")
    if spec.isolation not in set(Isolation):
        choices = " or ".join(repr(str(i)) for i in Isolation)
        raise ValidationError(f"{where}: isolation must be {choices}, not {spec.isolation!r}")
    secrets = check_secret_references(dict(spec.secrets), where)
    if len(spec.retry_on) > 64 or any(len(t) > 512 for t in spec.retry_on):
        raise ValidationError(f"{where}: retry_on takes at most 64 type names")
    if len(spec.options_json) > MAX_OPTIONS_BYTES:
        raise ValidationError(f"{where}: options exceed {MAX_OPTIONS_BYTES} bytes")
    options_where = f"{where}: options_json"
    if spec.options_json and not isinstance(_json(spec.options_json, options_where), dict):
        raise ValidationError(f"{where}: options must be a JSON object")
    _check_result_fields(spec, where)
    return dataclasses.replace(
        spec,
        concurrency=_check_concurrency(spec.concurrency, where),
        target=target,
        on_agent_lost=OnAgentLost(spec.on_agent_lost),
        isolation=Isolation(spec.isolation),
        secrets=tuple(sorted(secrets.items())),
        retry_backoff=spec.retry_backoff or 1.0,
        schedule_timeout_s=spec.schedule_timeout_s or DEFAULT_SCHEDULE_TIMEOUT_S,
    )


def _check_concurrency(names: Sequence[str], where: str) -> tuple[str, ...]:
    """Named limits a step takes: valid names, at most MAX_STEP_LIMITS, in acquisition order
    (whether each exists is checked when the step is submitted)."""
    if len(names) > MAX_STEP_LIMITS:
        raise ValidationError(f"{where}: concurrency names at most {MAX_STEP_LIMITS} limits")
    try:
        return acquisition_order(names)
    except ValidationError as exc:
        raise ValidationError(f"{where}: {exc}") from None


def _check_result_fields(spec: StepSpec, where: str) -> None:
    """Where the step's result goes (docs/results.md): a store name, a bounded threshold
    (0 = the default) and a known serializer ("" = automatic)."""
    if spec.result_store:
        # Cut to 64 characters so the message cannot echo a huge name (64 is already too long).
        problem = store_name_problem(spec.result_store[:64])
        if problem:
            raise ValidationError(f"{where}: result_store: {problem}")
    if not 0 <= spec.inline_threshold_bytes <= MAX_INLINE_THRESHOLD_BYTES:
        raise ValidationError(
            f"{where}: inline_threshold_bytes must be from 0 (the default) to "
            f"{MAX_INLINE_THRESHOLD_BYTES}, got {spec.inline_threshold_bytes}"
        )
    if spec.serializer and spec.serializer not in KNOWN_SERIALIZERS:
        raise ValidationError(
            f"{where}: serializer {spec.serializer[:40]!r} must be '' (automatic) or one of "
            f"{', '.join(sorted(KNOWN_SERIALIZERS))}"
        )


def validate_options(
    submissions: Submissions,
    schema_for: Callable[[str], Mapping[str, Any] | None],
) -> None:
    """Check each step's options against its provider's advertised schema, so a bad option
    fails the submission instead of the attempt on a remote agent. Providers no connected
    agent offers are checked by the agent before it runs anything."""
    for key, spec in submissions.specs():
        schema = schema_for(spec.provider)
        if schema is None:
            continue
        options = json.loads(spec.options_json) if spec.options_json else {}
        problem = first_problem(schema, options)
        if problem:
            raise ValidationError(
                f"step {key!r}: provider {spec.provider!r} rejects its options: {problem}"
            )


MAX_APPROVAL_MESSAGE_BYTES = 4 * 1024
MAX_APPROVAL_REASON_BYTES = 1024
MIN_APPROVAL_TIMEOUT_S = 1.0


def validate_approval_request(request: control_pb2.RequestApprovalRequest) -> None:
    if not request.flow_run_id:
        raise ValidationError("flow_run_id is required")
    validate_approval_key(request.key)
    size = len(request.message.encode())
    if size > MAX_APPROVAL_MESSAGE_BYTES:
        raise ValidationError(
            f"approval message is {size} bytes, above the limit of "
            f"{MAX_APPROVAL_MESSAGE_BYTES} (4 KiB); link to details instead"
        )
    timeout = request.timeout_s
    if not math.isfinite(timeout) or (
        timeout != 0 and not MIN_APPROVAL_TIMEOUT_S <= timeout <= MAX_SECONDS
    ):
        raise ValidationError(
            f"approval timeout_s must be 0 (no timeout) or between {MIN_APPROVAL_TIMEOUT_S:g} "
            f"and {MAX_SECONDS:.0f} seconds (30 days), got {timeout!r}"
        )


def validate_decision(request: control_pb2.DecideApprovalRequest) -> None:
    if not request.flow_run_id.strip():
        raise ValidationError("flow_run_id is required")
    validate_approval_key(request.key)
    size = len(request.reason.encode())
    if size > MAX_APPROVAL_REASON_BYTES:
        raise ValidationError(
            f"reason is {size} bytes, above the limit of {MAX_APPROVAL_REASON_BYTES} (1 KiB)"
        )
    if not request.approve and not request.reason.strip():
        raise ValidationError("a rejection needs a reason: say why (--reason)")


def validate_approval_key(key: str) -> None:
    """Keys are step-key-like: ``name#n`` or an explicit key, 1-512 visible characters."""
    if not key or len(key) > MAX_KEY:
        raise ValidationError(f"approval key must be 1-{MAX_KEY} characters")
    if key != key.strip() or any(unicodedata.category(c).startswith("C") for c in key):
        raise ValidationError(
            "approval key must not contain control or format characters, nor start or end "
            "with whitespace"
        )


MAX_LABELS = 64
MAX_PROVIDERS = 32


def validate_hello(hello: HelloIn) -> None:
    """An agent's self-description: labels must be ones a selector can match."""
    if len(hello.labels) > MAX_LABELS or len(hello.providers) > MAX_PROVIDERS:
        raise ValidationError(
            f"an agent may have at most {MAX_LABELS} labels and {MAX_PROVIDERS} providers"
        )
    if not 0 < hello.capacity <= 10_000:
        raise ValidationError("capacity must be between 1 and 10000")
    for key, value in hello.labels.items():
        problem = validate_key(key) or validate_value(value)
        if problem:
            # Bounded: a status message rides in gRPC metadata, limited to 16 KiB.
            raise ValidationError(f"label {key[:80]!r}: {problem[:300]}")
    for provider in hello.providers:
        if not PROVIDER_NAME.match(provider):
            raise ValidationError(f"provider {provider[:80]!r} is not a provider name")


MAX_ERROR_CLASS = 32
MAX_TYPE_NAME = 512
MAX_ERROR_MESSAGE = 8192
MAX_TRACEBACK = 65536
MAX_TYPE_MRO = 64


def validate_error(error: common_pb2.ErrorInfo) -> ErrorInfo | None:
    """A reported error, each field cut to its bound (the end of a traceback is kept: that is
    where the failing line is)."""
    info = error_from_proto(error)
    if info is None:
        return None
    return ErrorInfo(
        error_class=info.error_class[:MAX_ERROR_CLASS],
        type=info.type[:MAX_TYPE_NAME],
        message=info.message[:MAX_ERROR_MESSAGE],
        traceback=info.traceback[-MAX_TRACEBACK:],
        type_mro=tuple(t[:MAX_TYPE_NAME] for t in info.type_mro[:MAX_TYPE_MRO]),
    )


MAX_REASON = 1000


def validate_run_state(text: str) -> RunState | None:
    """A run-state filter (any case); empty means no filter."""
    if not text:
        return None
    try:
        return RunState(text.strip().upper())
    except ValueError:
        known = ", ".join(state.value for state in RunState)
        raise ValidationError(f"unknown run state {text[:40]!r}; use one of {known}") from None


def validate_reason(reason: str, what: str) -> str:
    """An operator's free-text reason (cancel, revoke, drain): refused, never silently cut,
    when it is too long."""
    if len(reason) > MAX_REASON:
        raise ValidationError(f"{what} is limited to {MAX_REASON} characters")
    return reason


def _json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ValidationError(f"{what} is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise ValidationError(f"{what} is nested too deeply") from exc
