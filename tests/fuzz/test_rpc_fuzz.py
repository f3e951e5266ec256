"""Every ControlService RPC fed hypothesis-generated requests by a hostile client.

Property: each call answers OK or one of the expected refusals (never INTERNAL or UNKNOWN),
the server logs no error for it, and afterwards it still answers a health check and a normal
``ListRuns``. Requests are built from the proto descriptors, so a new field or RPC is fuzzed
without editing this file; field names steer the values (ids of real runs and bundles, JSON
text, selectors, provider names, sizes at and just past every limit).

Bugs found were pinned by minimal tests at the end of the module (now fixed, they stay as
regression tests).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from control_plane.api.control_service import ControlService
from control_plane.api.validation import (
    MAX_INPUTS_BYTES,
    MAX_KEY,
    MAX_OPTIONS_BYTES,
    MAX_PARAMETERS_BYTES,
)
from protos.meridian.v1 import common_pb2, control_pb2, control_pb2_grpc
from tests.fuzz import CALL_TIMEOUT_S, EXPECTED_REFUSALS, FUZZ, FuzzPlane

SERVICE = control_pb2.DESCRIPTOR.services_by_name["ControlService"]
METHODS = [m.name for m in SERVICE.methods]
MAX_MESSAGE = 16 * 1024 * 1024  # ServerConfig.max_message_bytes default
# Streams that never end while their run is live: read them for this long, then stop.
WATCH_WINDOW_S = 0.5

# Filled by the module fixture, read lazily by the strategies (indices, so examples stay
# reproducible even though the server picks the ids).
M = TypeVar("M", bound=Message)
KNOWN: dict[str, list[str]] = {"run": [], "sha": [], "approval_run": []}


# ---- strategies -----------------------------------------------------------------------------

LIMITS = (
    63, 64, 65, 255, 256, 511, MAX_KEY, MAX_KEY + 1, 1000, 1001, 1024, 1025,
    8 * 1024, 16 * 1024 + 1, MAX_OPTIONS_BYTES, MAX_OPTIONS_BYTES + 1,
    MAX_PARAMETERS_BYTES, MAX_PARAMETERS_BYTES + 1,
)  # fmt: skip
# Rarely (sizes at the message limits are expensive to generate and send).
HUGE_LIMITS = (MAX_INPUTS_BYTES + 1, MAX_MESSAGE + 1)
ODD_TEXT = (
    "", " ", "\x00", "\x00\x01\x7f", "..", "../../etc/passwd", "%s%n%x", "' OR 1=1 --",
    "\u202e\u200b", "é", "🙂" * 3, "\ufeff", "\uffff", "null", "NaN", "-1", "*", "a" * 36,
)  # fmt: skip


def sized_text(sizes: tuple[int, ...] = LIMITS) -> st.SearchStrategy[str]:
    """A string of exactly one of ``sizes`` characters (1-, 2- or 4-byte characters)."""
    return st.builds(lambda n, c: c * n, st.sampled_from(sizes), st.sampled_from("aé🙂"))


def any_text() -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(max_size=40),
        st.sampled_from(ODD_TEXT),
        sized_text(),
        st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
    )


def _known(kind: str, index: int) -> str:
    values = KNOWN[kind]
    return values[index % len(values)] if values else ""


def run_ids() -> st.SearchStrategy[str]:
    known = st.integers(0, 1000).map(lambda i: _known("run", i))
    return st.one_of(
        known,
        known,
        st.tuples(known, st.integers(0, 40)).map(lambda kn: kn[0][: kn[1]]),  # prefixes
        known.map(lambda r: f"  {r}\t"),
        known.map(str.upper),
        any_text(),
        st.sampled_from(["%", "____", "0196%", "\\", "0" * 36, "0" * 37]),
    )


def shas() -> st.SearchStrategy[str]:
    return st.one_of(
        st.integers(0, 100).map(lambda i: _known("sha", i)),
        st.binary(min_size=32, max_size=32).map(bytes.hex),
        st.binary(min_size=32, max_size=32).map(lambda b: b.hex().upper()),
        any_text(),
    )


FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        [math.nan, math.inf, -math.inf, 0.0, -0.0, -1.0, 1e-300, 1e300, 1.7976931348623157e308]
    ),
)


def json_values(max_leaves: int = 8) -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**80), max_value=2**80),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=20),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=max_leaves,
    )


def nested(depth: int, bracket: str) -> str:
    if bracket == "[":
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


def json_texts(*, obj: bool = False) -> st.SearchStrategy[str]:
    """JSON-ish text: valid (incl. NaN/Infinity), deeply nested, broken, huge."""
    values = json_values()
    objects = st.dictionaries(st.text(max_size=8), values, max_size=4)
    deep = st.builds(
        nested,
        st.sampled_from([50, 500, 900, 990, 1000, 1100, 5000, 100_000]),
        st.sampled_from("[{"),
    )
    return st.one_of(
        (objects if obj else values).map(json.dumps),
        objects.map(json.dumps),
        deep,
        deep.map(lambda d: f'{{"a": {d}}}'),
        any_text(),
        st.binary(max_size=64).map(lambda b: b.decode("utf-8", "replace")),
        sized_text().map(lambda s: json.dumps({"a": s})),
    )


def inputs_texts() -> st.SearchStrategy[str]:
    args = st.lists(json_values(), max_size=3)
    kwargs = st.dictionaries(st.text(max_size=8), json_values(), max_size=3)
    deep = st.sampled_from([500, 990, 1000, 1100, 5000]).map(lambda d: nested(d, "["))
    return st.one_of(
        st.builds(lambda a, k: json.dumps({"args": a, "kwargs": k}), args, kwargs),
        deep.map(lambda d: f'{{"args": [{d}], "kwargs": {{}}}}'),
        json_texts(),
        st.sampled_from(HUGE_LIMITS).map(lambda n: json.dumps({"args": ["x" * n], "kwargs": {}})),
    )


def selectors() -> st.SearchStrategy[str]:
    tokens = st.sampled_from(
        ["cloud", "region", "a.b/c", "=", "==", "!=", " in ", " notin ", "!", "(", ")", ",",
         "aws", "us-east-1", " ", "", "-", "_", "x" * 64, "x" * 300, "é", "\x00", ">", "<"]
    )  # fmt: skip
    return st.one_of(st.lists(tokens, max_size=12).map("".join), any_text())


def provider_names() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(["process", "Process", "p" * 64, "p" * 65, "-x", "a b", "aws-ecs"]),
        any_text(),
    )


def dotted_names() -> st.SearchStrategy[str]:
    return st.one_of(
        st.from_regex(r"[A-Za-z_][A-Za-z0-9_.<>]{0,20}", fullmatch=True),
        st.sampled_from(["flows", "a." * 300, "os;rm", "__import__('os')"]),
        any_text(),
    )


def secret_maps() -> st.SearchStrategy[dict[str, str]]:
    names = st.one_of(st.from_regex(r"[A-Z_][A-Z0-9_]{0,10}", fullmatch=True), any_text())
    refs = st.one_of(
        st.sampled_from(["env:X", "file:/etc/shadow", "aws-sm:", "gcp-sm:p", "nope:x", ":"]),
        st.text(max_size=20).map(lambda t: "env:" + t),
        any_text(),
    )
    return st.dictionaries(names, refs, max_size=4)


def text_for(name: str) -> st.SearchStrategy[str]:
    """Values for a string field, chosen by what the field means."""
    if name == "flow_run_id":
        return run_ids()
    if name in ("sha256", "bundle_sha256"):
        return shas()
    if name == "inputs_json":
        return inputs_texts()
    if name.endswith("_json"):
        return json_texts(obj=name in ("parameters_json", "options_json"))
    if name == "target":
        return selectors()
    if name == "provider":
        return provider_names()
    if name in ("module", "function"):
        return dotted_names()
    if name == "key":
        return st.one_of(st.from_regex(r"[a-z]{1,8}#[0-9]{1,3}", fullmatch=True), any_text())
    if name == "on_agent_lost":
        return st.one_of(st.sampled_from(["", "retry", "fail", "wait"]), any_text())
    if name == "state":
        return st.one_of(st.sampled_from(["RUNNING", "COMPLETED", "running", "%"]), any_text())
    return any_text()


def ints(lo: int, hi: int) -> st.SearchStrategy[int]:
    edges = [v for v in (lo, lo + 1, -1, 0, 1, 2, 1000, 1001, hi - 1, hi) if lo <= v <= hi]
    return st.one_of(st.sampled_from(edges), st.integers(lo, hi))


INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_ENUM: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
}


def scalar_for(field: Any) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return text_for(field.name)
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.one_of(st.binary(max_size=200), sized_text().map(str.encode))
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return FLOATS if kind == FieldDescriptor.TYPE_DOUBLE else FLOATS.map(_float32)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind in INT_RANGES:
        return ints(*INT_RANGES[kind])
    raise NotImplementedError(f"no strategy for field {field.full_name}")


def _float32(value: float) -> float:
    return value if not math.isfinite(value) or abs(value) < 3e38 else math.copysign(3e38, value)


def messages(descriptor: Any, depth: int = 0) -> st.SearchStrategy[Any]:
    """Any message of this type: every field optional, values from ``field_values``."""
    fields = {f.name: field_values(f, depth) for f in descriptor.fields}
    cls = message_factory.GetMessageClass(descriptor)
    return st.fixed_dictionaries({}, optional=fields).map(lambda values: build(cls, values))


def field_values(field: Any, depth: int) -> st.SearchStrategy[Any]:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        if field.name == "secrets":
            return secret_maps()
        key, value = (field.message_type.fields_by_name[n] for n in ("key", "value"))
        return st.dictionaries(scalar_for(key), scalar_for(value), max_size=4)
    if field.message_type is not None:
        single: st.SearchStrategy[Any] = (
            messages(field.message_type, depth + 1)
            if depth < 3
            else st.just(message_factory.GetMessageClass(field.message_type)())
        )
    else:
        single = scalar_for(field)
    if field.is_repeated:
        return st.lists(single, max_size=3 if field.message_type is not None else 70)
    return single


def build(cls: type[M], values: dict[str, Any]) -> M:
    message = cls()
    for name, value in values.items():
        target = getattr(message, name)
        field = cls.DESCRIPTOR.fields_by_name[name]
        if isinstance(value, dict):
            target.update(value)
        elif isinstance(value, list):
            if field.message_type is not None:
                for item in value:
                    target.add().CopyFrom(item)
            else:
                target.extend(value)
        elif isinstance(value, Message):
            target.CopyFrom(value)
        else:
            setattr(message, name, value)
    return message


def valid_spec(**overrides: Any) -> common_pb2.StepSpec:
    values: dict[str, Any] = {
        "name": "work",
        "module": "flows",
        "function": "work",
        "provider": "process",
        "target": "site=nowhere",  # no agent runs in this module; nothing is ever assigned
    }
    values.update(overrides)
    return common_pb2.StepSpec(**values)


SPEC_FIELDS = {f.name: f for f in common_pb2.StepSpec.DESCRIPTOR.fields}


@st.composite
def plausible_submissions(draw: st.DrawFn) -> control_pb2.SubmitStepsRequest:
    """Submissions that pass most validation, so the store and engine see hostile values:
    a valid spec with up to three fields replaced by hostile ones."""
    steps = []
    for _ in range(draw(st.integers(1, 3))):
        overrides = {
            name: draw(field_values(SPEC_FIELDS[name], depth=3))
            for name in draw(st.sets(st.sampled_from(sorted(SPEC_FIELDS)), max_size=3))
        }
        spec = valid_spec()
        for name in overrides:
            spec.ClearField(name)
        spec.MergeFrom(build(common_pb2.StepSpec, overrides))
        key = draw(st.one_of(st.from_regex(r"[a-z]{1,6}#[0-9]{1,2}", fullmatch=True), any_text()))
        steps.append(
            control_pb2.StepSubmission(key=key, spec=spec, inputs_json=draw(inputs_texts()))
        )
    run_id = draw(st.one_of(st.integers(0, 1000).map(lambda i: _known("run", i)), run_ids()))
    return control_pb2.SubmitStepsRequest(flow_run_id=run_id, steps=steps)


@st.composite
def plausible_runs(draw: st.DrawFn) -> control_pb2.CreateRunRequest:
    return control_pb2.CreateRunRequest(
        flow_name=draw(st.one_of(st.text(min_size=1, max_size=30), any_text())),
        entrypoint=draw(any_text()),
        parameters_json=draw(json_texts(obj=True)),
        bundle_sha256=draw(st.integers(0, 100).map(lambda i: _known("sha", i))),
        trigger=draw(st.one_of(st.sampled_from(["", "api", "manual"]), any_text())),
    )


def plausible_approval_calls(method_name: str) -> st.SearchStrategy[Any]:
    """Approval calls aimed at a run kept for them (never cancelled by the other fuzzing),
    with keys it has, so the store sees hostile messages, reasons, timeouts and decisions."""
    run = st.integers(0, 10).map(lambda i: _known("approval_run", i))
    keys = st.one_of(st.sampled_from(["gate#1", "gate#2", "gate", "gate#"]), text_for("key"))
    if method_name == "RequestApproval":
        timeouts = st.one_of(FLOATS, st.sampled_from([0.0, 1.0, 2592000.0, 2592000.5]))
        messages_ = st.one_of(any_text(), sized_text((4096, 4097)))
        return st.builds(
            lambda r, k, m, t: control_pb2.RequestApprovalRequest(
                flow_run_id=r, key=k, message=m, timeout_s=t
            ),
            run,
            keys,
            messages_,
            timeouts,
        )
    return st.builds(
        lambda r, k, a, why: control_pb2.DecideApprovalRequest(
            flow_run_id=r, key=k, approve=a, reason=why
        ),
        st.one_of(run, run.map(lambda r: r[:8])),
        keys,
        st.booleans(),
        st.one_of(any_text(), sized_text((1024, 1025))),
    )


def _with_known_run(request: Any) -> Any:
    request.flow_run_id = _known("run", request.ByteSize())
    return request


def requests_for(method: MethodDescriptor) -> st.SearchStrategy[Any]:
    generic = messages(method.input_type)
    if method.name == "SubmitSteps":
        generic = st.one_of(generic, plausible_submissions(), plausible_submissions())
    if "flow_run_id" in method.input_type.fields_by_name:
        # Aim half of the requests at runs that exist (most of them RUNNING).
        generic = st.one_of(generic, generic.map(_with_known_run))
    if method.name == "CreateRun":
        generic = st.one_of(generic, plausible_runs())
    if method.name in ("RequestApproval", "DecideApproval"):
        generic = st.one_of(generic, plausible_approval_calls(method.name))
    if method.client_streaming:
        return st.lists(generic, max_size=3)
    return generic


# ---- calling the server ---------------------------------------------------------------------


def call_method(
    plane: FuzzPlane, method: MethodDescriptor, request: Any, *, raw: bool = False
) -> tuple[grpc.StatusCode, str, list[Any]]:
    """Call ``method`` (``request`` as messages, or bytes when ``raw``); return the status,
    its details and the responses received."""
    path = f"/{SERVICE.full_name}/{method.name}"
    output = message_factory.GetMessageClass(method.output_type)
    serialize: Callable[[Any], bytes] | None = None if raw else _serialize
    deserialize = output.FromString
    channel = plane.channel
    responses: list[Any] = []
    try:
        if method.client_streaming:
            stub = channel.stream_unary(path, serialize, deserialize)
            responses.append(stub(iter(request), timeout=CALL_TIMEOUT_S))
        elif method.server_streaming:
            timeout = WATCH_WINDOW_S if method.name == "WatchRun" else CALL_TIMEOUT_S
            stream = channel.unary_stream(path, serialize, deserialize)
            for response in stream(request, timeout=timeout):
                responses.append(response)
        else:
            unary = channel.unary_unary(path, serialize, deserialize)
            responses.append(unary(request, timeout=CALL_TIMEOUT_S))
    except grpc.RpcError as error:
        assert isinstance(error, grpc.Call)
        return error.code(), error.details() or "", responses
    return grpc.StatusCode.OK, "", responses


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def remember_new_ids(responses: list[Any]) -> None:
    for response in responses:
        run_id = getattr(response, "flow_run_id", "")
        if run_id and run_id not in KNOWN["run"]:
            KNOWN["run"].append(run_id)


def check_answer(
    plane: FuzzPlane, method: MethodDescriptor, code: grpc.StatusCode, details: str, mark: int
) -> None:
    allowed = EXPECTED_REFUSALS | {grpc.StatusCode.OK}
    if method.name == "WatchRun":
        allowed |= {grpc.StatusCode.DEADLINE_EXCEEDED}  # a live run's stream never ends
    assert code in allowed, (method.name, code, details[:300])
    errors = [line for line in plane.logs.since(mark) if line.startswith(("ERROR", "CRITICAL"))]
    assert not errors, (method.name, errors)
    plane.assert_healthy()


# ---- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plane(fuzz_plane: FuzzPlane) -> Iterator[FuzzPlane]:
    """The module's control plane with two bundles and a few RUNNING runs to aim at."""
    for values in KNOWN.values():
        values.clear()
    for size in (10, 2000):
        data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        sha = hashlib.sha256(data).hexdigest()
        chunk = common_pb2.BundleChunk(sha256=sha, total_size=len(data), data=data)
        fuzz_plane.control.UploadBundle(iter([chunk]), timeout=CALL_TIMEOUT_S)
        KNOWN["sha"].append(sha)
    for i in range(4):
        response = fuzz_plane.control.CreateRun(
            control_pb2.CreateRunRequest(
                flow_name=f"fuzz_{i}",
                entrypoint="flows.py:fuzz",
                parameters_json="{}",
                bundle_sha256=KNOWN["sha"][i % 2],
            ),
            timeout=CALL_TIMEOUT_S,
        )
        KNOWN["run"].append(response.flow_run_id)
    fuzz_plane.control.SubmitSteps(
        control_pb2.SubmitStepsRequest(
            flow_run_id=KNOWN["run"][0],
            steps=[control_pb2.StepSubmission(key="seed#1", spec=valid_spec())],
        ),
        timeout=CALL_TIMEOUT_S,
    )
    gated = fuzz_plane.control.CreateRun(
        control_pb2.CreateRunRequest(flow_name="fuzz_gate", bundle_sha256=KNOWN["sha"][0]),
        timeout=CALL_TIMEOUT_S,
    )
    fuzz_plane.control.RequestApproval(
        control_pb2.RequestApprovalRequest(flow_run_id=gated.flow_run_id, key="gate#1"),
        timeout=CALL_TIMEOUT_S,
    )
    KNOWN["approval_run"].append(gated.flow_run_id)
    yield fuzz_plane


# ---- properties -----------------------------------------------------------------------------


def implemented(method_name: str) -> MethodDescriptor:
    """The method's descriptor; skips an RPC the proto declares but the servicer does not
    implement yet (it would answer UNIMPLEMENTED), so a new RPC is fuzzed once it exists."""
    base = getattr(control_pb2_grpc.ControlServiceServicer, method_name)
    if getattr(ControlService, method_name) is base:
        pytest.skip(f"ControlService does not implement {method_name} yet")
    return SERVICE.methods_by_name[method_name]


@pytest.mark.parametrize("method_name", METHODS)
def test_every_rpc_answers_hostile_messages_with_a_refusal_or_ok(
    plane: FuzzPlane, method_name: str
) -> None:
    method = implemented(method_name)

    @given(request=requests_for(method))
    def fuzz(request: Any) -> None:
        mark = plane.logs.mark()
        code, details, responses = call_method(plane, method, request)
        if code == grpc.StatusCode.OK:
            remember_new_ids(responses)
        check_answer(plane, method, code, details, mark)

    # The RPCs with the most to validate get the most examples.
    examples = {
        "SubmitSteps": 150,
        "CreateRun": 60,
        "FinishRun": 60,
        "RequestApproval": 60,
        "DecideApproval": 60,
    }.get(method_name, 35)
    settings(FUZZ, max_examples=examples)(fuzz)()


@pytest.mark.parametrize("method_name", METHODS)
def test_every_rpc_survives_random_request_bytes(plane: FuzzPlane, method_name: str) -> None:
    """Raw bytes as the request body. Bytes that decode as the request type must get a normal
    answer; undecodable ones are INVALID_ARGUMENT naming the expected message, without an
    error log. Request streams send the bytes as each message."""
    method = implemented(method_name)
    request_type = message_factory.GetMessageClass(method.input_type)
    wire = st.one_of(
        st.binary(max_size=300),
        messages(method.input_type).map(_serialize).flatmap(_mutations),
    )

    @given(body=st.lists(wire, min_size=1, max_size=3) if method.client_streaming else wire)
    def fuzz(body: bytes | list[bytes]) -> None:
        bodies = body if isinstance(body, list) else [body]
        mark = plane.logs.mark()
        code, details, _ = call_method(plane, method, body, raw=True)
        if all(_decodes(request_type, b) for b in bodies):
            check_answer(plane, method, code, details, mark)
            return
        if _decodes(request_type, bodies[0]):
            # A stream may be refused for its (decodable) first message before the bad one.
            check_answer(plane, method, code, details, mark)
            return
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
        assert details == f"request is not a valid {method.input_type.name} protobuf", details
        errors = [line for line in plane.logs.since(mark) if line.startswith("ERROR")]
        assert not errors, errors
        plane.assert_healthy()

    settings(FUZZ, max_examples=15)(fuzz)()


def _decodes(request_type: type[Message], body: bytes) -> bool:
    try:
        request_type.FromString(body)
    except Exception:
        return False
    return True


def _mutations(data: bytes) -> st.SearchStrategy[bytes]:
    """A valid encoding, cut short, with a byte flipped, or with garbage appended."""
    n = len(data)
    return st.one_of(
        st.just(data),
        st.integers(0, max(n - 1, 0)).map(lambda i: data[:i]),
        st.tuples(st.integers(0, max(n - 1, 0)), st.integers(1, 255)).map(
            lambda t: data[: t[0]] + bytes([(data[t[0]] if n else 0) ^ t[1]]) + data[t[0] + 1 :]
        ),
        st.binary(min_size=1, max_size=20).map(lambda extra: data + extra),
    )


TOKEN_TEXT = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=120
)
TOKENS = st.one_of(
    TOKEN_TEXT,
    TOKEN_TEXT.map(lambda t: "mat_" + t),
    st.tuples(st.binary(min_size=8, max_size=8), TOKEN_TEXT).map(
        lambda p: f"mat_{p[0].hex()}.{p[1]}"  # well-formed, never issued
    ),
    st.sampled_from(["mat_", "mat_.", "Bearer", "x" * 4000]),
)


def test_calls_without_a_valid_api_token_are_unauthenticated(plane: FuzzPlane) -> None:
    """Random bearer tokens (and none) on every method: UNAUTHENTICATED for all but the
    public ones, never another code, and a presented token is never echoed back."""
    anonymous = plane.client_channel(None)
    methods = [m for m in METHODS if m != "GetServerInfo"]

    @given(method_name=st.sampled_from(methods), token=st.one_of(st.none(), TOKENS))
    def fuzz(method_name: str, token: str | None) -> None:
        method = SERVICE.methods_by_name[method_name]
        request = message_factory.GetMessageClass(method.input_type)()
        metadata: tuple[tuple[str, str | bytes], ...] | None = (
            None if token is None else (("authorization", f"Bearer {token}"),)
        )
        path = f"/{SERVICE.full_name}/{method.name}"
        try:
            if method.client_streaming:
                anonymous.stream_unary(path, _serialize, None)(
                    iter([request]), metadata=metadata, timeout=CALL_TIMEOUT_S
                )
            elif method.server_streaming:
                list(
                    anonymous.unary_stream(path, _serialize, None)(
                        request, metadata=metadata, timeout=CALL_TIMEOUT_S
                    )
                )
            else:
                anonymous.unary_unary(path, _serialize, None)(
                    request, metadata=metadata, timeout=CALL_TIMEOUT_S
                )
        except grpc.RpcError as error:
            assert isinstance(error, grpc.Call)
            code, details = error.code(), error.details() or ""
        else:
            raise AssertionError(f"{method_name} answered without a valid token")
        assert code == grpc.StatusCode.UNAUTHENTICATED, (method_name, code, details[:200])
        if token is not None and len(token.strip()) >= 8:
            assert token.strip() not in details, "the presented token was echoed"
        plane.assert_healthy()

    settings(FUZZ, max_examples=60)(fuzz)()


def test_the_server_still_serves_after_the_fuzzing(plane: FuzzPlane) -> None:
    plane.assert_healthy()
    sha = KNOWN["sha"][0]
    response = plane.control.CreateRun(
        control_pb2.CreateRunRequest(flow_name="after_fuzz", bundle_sha256=sha),
        timeout=CALL_TIMEOUT_S,
    )
    submitted = plane.control.SubmitSteps(
        control_pb2.SubmitStepsRequest(
            flow_run_id=response.flow_run_id,
            steps=[control_pb2.StepSubmission(key="fine#1", spec=valid_spec())],
        ),
        timeout=CALL_TIMEOUT_S,
    )
    assert submitted.steps[0].state == "PENDING"
    verified = plane.control.VerifyAudit(control_pb2.VerifyAuditRequest(), timeout=CALL_TIMEOUT_S)
    assert verified.ok, verified


# ---- bugs found by the properties above -----------------------------------------------------


def test_bug_nan_runner_lease_is_invalid_argument(plane: FuzzPlane) -> None:
    run_id = KNOWN["run"][-1]
    plane.control.GetRun(control_pb2.GetRunRequest(flow_run_id=run_id), timeout=CALL_TIMEOUT_S)
    mark = plane.logs.mark()
    code, details, _ = call_method(
        plane,
        SERVICE.methods_by_name["RenewRunnerLease"],
        control_pb2.RenewRunnerLeaseRequest(flow_run_id=run_id, lease_s=math.nan),
    )
    plane.assert_healthy()
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT), (code, details)
    assert not plane.logs.since(mark)


def test_bug_huge_run_id_is_not_found_not_stream_removed(plane: FuzzPlane) -> None:
    code, details, _ = call_method(
        plane,
        SERVICE.methods_by_name["GetRun"],
        control_pb2.GetRunRequest(flow_run_id="z" * 20_000),
    )
    plane.assert_healthy()
    assert code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT), (code, details)


def test_bug_huge_provider_name_is_invalid_argument(plane: FuzzPlane) -> None:
    request = control_pb2.SubmitStepsRequest(
        flow_run_id=KNOWN["run"][0],
        steps=[control_pb2.StepSubmission(key="big#1", spec=valid_spec(provider="P" * 100_000))],
    )
    code, details, _ = call_method(plane, SERVICE.methods_by_name["SubmitSteps"], request)
    plane.assert_healthy()
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)


def test_bug_undecodable_request_is_invalid_argument(plane: FuzzPlane) -> None:
    """gRPC Python answered UNKNOWN and logged an error for a body that is not protobuf
    (its DecodeError is raised before the handler); control_plane.api.decoding fixes it."""
    mark = plane.logs.mark()
    code, details, _ = call_method(
        plane, SERVICE.methods_by_name["GetRun"], b"\xff\xff\xff", raw=True
    )
    plane.assert_healthy()
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert details == "request is not a valid GetRunRequest protobuf"
    assert not [line for line in plane.logs.since(mark) if line.startswith("ERROR")]
