"""meridian.core.sealing: envelopes, AES-SIV sealing bound to its context, key rings, key files."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from control_plane.api.validation import MAX_INPUTS_BYTES, validate_error
from meridian.core import sealing
from meridian.core.errors import SealError
from meridian.core.sealing import (
    ERROR_MESSAGE,
    RESULT,
    Envelope,
    KeyRing,
    generate_key_file,
    read_key_file,
)
from protos.meridian.v1 import common_pb2

INPUTS_JSON = '{"args":["acct-4711-secret"],"kwargs":{"limit":3}}'


@pytest.fixture
def ring() -> KeyRing:
    return KeyRing({"eu-sites": os.urandom(64), "us-sites": os.urandom(32)})


def write_key(path: Path, text: str | bytes, mode: int = 0o600) -> Path:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    path.chmod(mode)
    return path


# ---- round trips and determinism ---------------------------------------------------------------


@pytest.mark.parametrize("group", ["eu-sites", "us-sites"])  # 64-byte and expanded 32-byte keys
def test_inputs_round_trip_and_envelope_shape(ring: KeyRing, group: str) -> None:
    sealed = sealing.seal_inputs(ring, group, INPUTS_JSON, "run-1", "load#1")
    value = json.loads(sealed)
    assert value["args"] == [] and value["kwargs"] == {}
    assert set(value["sealed"]) == {"v", "key", "ct"} and value["sealed"]["key"] == group
    assert "acct-4711-secret" not in sealed
    assert sealing.inputs_key_group(sealed) == group
    assert sealing.inputs_key_group(INPUTS_JSON) is None
    assert sealing.open_inputs(ring, sealed, "run-1", "load#1") == INPUTS_JSON


def test_sealing_is_deterministic_per_step_and_run(ring: KeyRing) -> None:
    """Same inputs for the same step of the same run: the same text (stable inputs digest)."""
    first = sealing.seal_inputs(ring, "eu-sites", INPUTS_JSON, "run-1", "load#1")
    assert sealing.seal_inputs(ring, "eu-sites", INPUTS_JSON, "run-1", "load#1") == first
    assert sealing.seal_inputs(ring, "eu-sites", INPUTS_JSON, "run-1", "load#2") != first
    assert sealing.seal_inputs(ring, "eu-sites", INPUTS_JSON, "run-2", "load#1") != first


def test_text_round_trip_and_empty_text(ring: KeyRing) -> None:
    text = '{"total": 42, "owner": "Jane Roe"}'
    sealed = sealing.seal_text(ring, "eu-sites", text, RESULT, "run-1", "sum#1")
    assert sealed.startswith('{"$sealed":{"v":1,"key":"eu-sites","ct":"')
    assert json.loads(sealed)  # still JSON: the control plane stores it as a result
    assert sealing.open_text(ring, sealed, RESULT, "run-1", "sum#1", "eu-sites") == text
    assert sealing.seal_text(ring, "eu-sites", "", RESULT, "run-1", "sum#1") == ""


# ---- what must fail ----------------------------------------------------------------------------


def test_a_different_key_of_the_same_group_fails_naming_the_group(ring: KeyRing) -> None:
    sealed = sealing.seal_inputs(ring, "eu-sites", INPUTS_JSON, "run-1", "load#1")
    other = KeyRing({"eu-sites": os.urandom(64)})
    with pytest.raises(SealError, match="did not authenticate with key group 'eu-sites'") as info:
        sealing.open_inputs(other, sealed, "run-1", "load#1")
    assert "acct-4711" not in str(info.value)


def test_a_tampered_ciphertext_fails(ring: KeyRing) -> None:
    sealed = sealing.seal_text(ring, "eu-sites", '"payload"', RESULT, "run-1", "s#1")
    envelope = sealing.sealed_envelope(sealed)
    assert envelope is not None
    flipped = bytearray(envelope.ciphertext)
    flipped[-1] ^= 0x01
    tampered = json.dumps({"$sealed": Envelope("eu-sites", bytes(flipped)).to_value()})
    with pytest.raises(SealError, match="did not authenticate"):
        sealing.open_text(ring, tampered, RESULT, "run-1", "s#1", "eu-sites")


@pytest.mark.parametrize(
    ("purpose", "run_id", "step_key"),
    [
        (RESULT, "run-1", "other#1"),  # moved to another step
        (RESULT, "run-2", "s#1"),  # moved to another run
        (ERROR_MESSAGE, "run-1", "s#1"),  # a result presented as an error message
    ],
)
def test_a_ciphertext_moved_to_another_context_fails(
    ring: KeyRing, purpose: str, run_id: str, step_key: str
) -> None:
    sealed = sealing.seal_text(ring, "eu-sites", '"payload"', RESULT, "run-1", "s#1")
    with pytest.raises(SealError, match="did not authenticate"):
        sealing.open_text(ring, sealed, purpose, run_id, step_key, "eu-sites")


def test_sealed_inputs_cannot_be_opened_as_a_result(ring: KeyRing) -> None:
    sealed = sealing.seal_inputs(ring, "eu-sites", INPUTS_JSON, "run-1", "s#1")
    ct = json.loads(sealed)["sealed"]
    as_result = json.dumps({"$sealed": ct}, separators=(",", ":"))
    with pytest.raises(SealError, match="did not authenticate"):
        sealing.open_text(ring, as_result, RESULT, "run-1", "s#1", "eu-sites")


def test_an_unsealed_or_regrouped_value_is_refused_where_a_sealed_one_is_expected(
    ring: KeyRing,
) -> None:
    with pytest.raises(SealError, match="arrived unsealed"):
        sealing.open_text(ring, '{"total": 1}', RESULT, "run-1", "s#1", "eu-sites")
    us = sealing.seal_text(ring, "us-sites", '"x"', RESULT, "run-1", "s#1")
    with pytest.raises(SealError, match="sealed with key group 'us-sites', expected 'eu-sites'"):
        sealing.open_text(ring, us, RESULT, "run-1", "s#1", "eu-sites")


def test_a_missing_group_says_how_to_add_it(ring: KeyRing) -> None:
    with pytest.raises(SealError) as info:
        sealing.seal_inputs(ring, "apac", INPUTS_JSON, "run-1", "s#1")
    message = str(info.value)
    assert "'apac'" in message and "eu-sites, us-sites" in message
    assert "MERIDIAN_SEAL_KEYS" in message and "[sealing.keys]" in message


def test_key_material_never_shows_in_repr(ring: KeyRing) -> None:
    key = os.urandom(64)
    shown = repr(KeyRing({"g": key}))
    assert shown == "KeyRing(groups=['g'])"
    assert base64.b64encode(key).decode() not in shown and key.hex() not in shown


# ---- sizes -------------------------------------------------------------------------------------


def test_the_largest_sealable_inputs_fit_the_control_planes_limit(ring: KeyRing) -> None:
    payload = "x" * (sealing.MAX_PLAINTEXT_BYTES - 30)
    inputs = json.dumps({"args": [payload], "kwargs": {}})
    assert len(inputs.encode()) <= sealing.MAX_PLAINTEXT_BYTES
    sealed = sealing.seal_inputs(ring, "eu-sites", inputs, "run-1", "s#1")
    assert len(sealed.encode()) <= MAX_INPUTS_BYTES


def test_plaintext_above_the_limit_is_refused_with_the_fix(ring: KeyRing) -> None:
    too_big = "x" * (sealing.MAX_PLAINTEXT_BYTES + 1)
    with pytest.raises(SealError, match=r"above the limit .* pass a reference"):
        sealing.seal_text(ring, "eu-sites", too_big, RESULT, "run-1", "s#1")


def test_sealed_error_texts_survive_the_control_planes_truncation(ring: KeyRing) -> None:
    """The stored error keeps 8192 characters of message and the last 65536 of traceback:
    sealed texts are cut to fit before sealing, so what is stored still opens."""
    message, traceback = "é" * 10_000, "line\n" * 40_000
    sealed_msg, sealed_tb = sealing.seal_error_texts(
        ring, "eu-sites", message, traceback, "run-1", "s#1"
    )
    stored = validate_error(
        common_pb2.ErrorInfo(error_class="transient", message=sealed_msg, traceback=sealed_tb)
    )
    assert stored is not None
    opened_msg = sealing.open_text(ring, stored.message, ERROR_MESSAGE, "run-1", "s#1", "eu-sites")
    opened_tb = sealing.open_text(
        ring, stored.traceback, sealing.ERROR_TRACEBACK, "run-1", "s#1", "eu-sites"
    )
    assert opened_msg.startswith("éé") and opened_msg.endswith("[message truncated]")
    assert opened_tb.startswith("...[traceback truncated]") and opened_tb.endswith("line\n")


# ---- envelopes and display ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ({"v": 1, "key": "g"}, "must be"),
        ({"v": 2, "key": "g", "ct": "AAAAAAAAAAAAAAAAAAAAAA=="}, "format version 2"),
        ({"v": True, "key": "g", "ct": "AAAAAAAAAAAAAAAAAAAAAA=="}, "format version"),
        ({"v": 1, "key": "bad group", "ct": "AAAAAAAAAAAAAAAAAAAAAA=="}, "not a key group"),
        ({"v": 1, "key": "g", "ct": "not base64!"}, "not valid base64"),
        ({"v": 1, "key": "g", "ct": "AAAA"}, "shorter than its authentication tag"),
        ({"v": 1, "key": "g", "ct": ""}, "non-empty base64"),
    ],
)
def test_malformed_envelopes_are_described(value: object, needle: str) -> None:
    problem = sealing.envelope_problem(value)
    assert problem is not None and needle in problem


def test_mask_and_describe_sealed_values(ring: KeyRing) -> None:
    sealed = sealing.seal_text(ring, "eu-sites", "boom: card 4111", ERROR_MESSAGE, "r", "s#1")
    assert sealing.mask_sealed(sealed) == "[sealed: eu-sites]"
    # An event message keeps 1000 characters: a cut-off envelope is masked too.
    line = f"transient: builtins.ValueError: {sealed}"
    assert sealing.mask_sealed(line[:60]) == "transient: builtins.ValueError: [sealed]"
    assert sealing.mask_sealed(line[:90]) == "transient: builtins.ValueError: [sealed: eu-sites]"
    assert (
        sealing.mask_sealed(f"{sealed} and {sealed}") == "[sealed: eu-sites] and [sealed: eu-sites]"
    )
    assert sealing.mask_sealed("plain text") == "plain text"
    described = sealing.describe_sealed(sealed)
    assert described is not None and described["key_group"] == "eu-sites"
    assert len(described["sha256"]) == 64 and described["bytes"] == len(sealed)
    assert sealing.describe_sealed('{"$sealed": 1}') is None
    assert sealing.describe_sealed('"text"') is None


# ---- key rings and key files -------------------------------------------------------------------


def test_generated_key_file_is_private_loads_and_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "eu.key"
    fingerprint = generate_key_file(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(base64.b64decode(path.read_text().strip())) == 64
    ring = KeyRing.from_references({"eu-sites": f"file:{path}"})
    assert ring.groups == ("eu-sites",) and ring.fingerprint("eu-sites") == fingerprint
    with pytest.raises(SealError, match="already exists"):
        generate_key_file(path)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_a_key_file_others_can_access_is_refused(tmp_path: Path, mode: int) -> None:
    path = write_key(tmp_path / "k", base64.b64encode(os.urandom(64)), mode)
    with pytest.raises(SealError, match=f"accessible by group or others .*{mode:04o}.*chmod 600"):
        read_key_file(path, "eu-sites")


@pytest.mark.parametrize(
    "encode",
    [
        lambda k: base64.b64encode(k).decode(),
        lambda k: k.hex(),
        lambda k: k.hex().upper() + "\n",
    ],
)
@pytest.mark.parametrize("size", [32, 64])
def test_key_files_in_base64_or_hex_of_32_or_64_bytes(tmp_path: Path, encode, size: int) -> None:
    key = os.urandom(size)
    path = write_key(tmp_path / "k", encode(key))
    assert read_key_file(path) == KeyRing({"g": key})._keys["g"]


@pytest.mark.parametrize(
    "content",
    ["", "not a key", base64.b64encode(os.urandom(16)).decode()],
    ids=["empty", "text", "16-random-bytes"],  # stable across xdist workers
)
def test_a_key_file_without_a_key_is_refused_without_quoting_it(
    tmp_path: Path, content: str
) -> None:
    path = write_key(tmp_path / "k", content)
    with pytest.raises(SealError, match="must hold the base64 or hex") as info:
        read_key_file(path, "eu-sites")
    assert not content or content not in str(info.value)


def test_from_spec_parses_the_environment_variable(tmp_path: Path) -> None:
    eu = tmp_path / "eu.key"
    us = tmp_path / "us.key"
    generate_key_file(eu)
    generate_key_file(us)
    ring = KeyRing.from_env({sealing.ENV_KEYS: f"eu-sites=file:{eu}, us-sites=file:{us}"})
    assert ring.groups == ("eu-sites", "us-sites")
    assert not KeyRing.from_env({})
    for spec, needle in [
        ("eu-sites", "must be GROUP=file:"),
        (f"eu-sites=env:{eu}", "must be 'file:/path/to/key'"),
        (f"bad group=file:{eu}", "must be 1-64 letters"),
        (f"eu-sites=file:{tmp_path / 'missing'}", "cannot read it"),
    ]:
        with pytest.raises(SealError, match=needle):
            KeyRing.from_spec(spec)
