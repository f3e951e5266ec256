"""End-to-end sealing of step inputs and results with keys only runners and agents hold.

A *key group* (e.g. ``eu-sites``) names one secret key shared by the flow runners that submit
work to a group of environments and by the agents of those environments; the control plane
never has it (docs/security.md, "End-to-end sealing of inputs and results").

Values are sealed with AES-SIV (RFC 5297, 512-bit key): *deterministic* authenticated
encryption, so the same inputs sealed again for the same step of the same run give the same
ciphertext, and the control plane's inputs digest, which ``runs resume`` compares, stays
stable. The associated data binds each ciphertext to what it is (inputs, result, error
text), the flow run, the step key and the key group: a ciphertext moved to another step, run
or field fails authentication instead of being accepted.

Sealed values stay JSON that passes the control plane's checks::

    step inputs:           {"args": [], "kwargs": {}, "sealed": ENVELOPE}
    results, error texts:  {"$sealed": ENVELOPE}
    ENVELOPE = {"v": 1, "key": "eu-sites", "ct": "<base64 of the SIV tag and ciphertext>"}

This module does no network I/O and imports no SDK, agent or control-plane code: the SDK, the
agent, the control plane's input validation and the CLI's rendering all share it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meridian.core._sealkeys import expand_key, fingerprint, read_key_file
from meridian.core._sealkeys import generate_key_file as generate_key_file
from meridian.core.errors import SealError

ENV_KEYS = "MERIDIAN_SEAL_KEYS"
VERSION = 1
KEY_GROUP = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# A sealed value must fit the limits the control plane applies to what it stores: 4 MiB of
# inputs (base64 adds a third), 8 KiB of error message, the last 64 KiB of a traceback.
MAX_PLAINTEXT_BYTES = 3 * 1024 * 1024 - 4096
MAX_SEALED_MESSAGE_BYTES = 6000
MAX_SEALED_TRACEBACK_BYTES = 48000
_MAX_CT_CHARS = 4 * 1024 * 1024
_SIV_TAG_BYTES = 16

# What a sealed value is; part of its associated data.
INPUTS = "meridian-inputs-v1"
RESULT = "meridian-result-v1"
ERROR_MESSAGE = "meridian-error-message-v1"
ERROR_TRACEBACK = "meridian-error-traceback-v1"
_WHAT = {
    INPUTS: "inputs",
    RESULT: "result",
    ERROR_MESSAGE: "error message",
    ERROR_TRACEBACK: "error traceback",
}
# The step key used for the flow run's own result and error (step keys are never empty).
FLOW = ""

_SEALED_TEXT_PREFIX = '{"$sealed":'
_SEALED_PATTERN = re.compile(
    r'\{"\$sealed":\{"v":\d+,"key":"([A-Za-z0-9_.-]{1,64})","ct":"[A-Za-z0-9+/=]*"\}\}'
)
# A sealed text cut short by a length limit (event messages keep 1000 characters): it ends
# the text, and only the envelope's own characters follow its start.
_CUT_PATTERN = re.compile(r'\{"\$sealed":[A-Za-z0-9_.+/=:,"{}-]*\Z')
_CUT_GROUP = re.compile(r'"key":"([A-Za-z0-9_.-]{1,64})"')


@dataclass(frozen=True)
class Envelope:
    """One sealed value: the key group that sealed it and the SIV tag + ciphertext."""

    key_group: str
    ciphertext: bytes

    def to_value(self) -> dict[str, Any]:
        text = base64.b64encode(self.ciphertext).decode("ascii")
        return {"v": VERSION, "key": self.key_group, "ct": text}

    @classmethod
    def from_value(cls, value: Any) -> Envelope:
        """Parse ``{"v": 1, "key": ..., "ct": ...}``; SealError says what is wrong."""
        problem = envelope_problem(value)
        if problem:
            raise SealError(f"malformed sealed value: {problem}")
        return cls(value["key"], base64.b64decode(value["ct"], validate=True))


def envelope_problem(value: Any) -> str | None:
    """Why ``value`` is not a well-formed envelope, or None. Pure: no key needed."""
    if not isinstance(value, dict) or set(value) != {"v", "key", "ct"}:
        return 'a sealed value must be {"v": 1, "key": GROUP, "ct": BASE64}'
    if value["v"] != VERSION or isinstance(value["v"], bool):
        return (
            f"sealed with format version {str(value['v'])[:20]}; this Meridian reads version "
            f"{VERSION} "
            "(upgrade Meridian where the value is opened)"
        )
    group = value["key"]
    if not isinstance(group, str) or not KEY_GROUP.match(group):
        return f"key group {str(group)[:80]!r} is not a key group name"
    ct = value["ct"]
    if not isinstance(ct, str) or not 0 < len(ct) <= _MAX_CT_CHARS:
        return "the ciphertext must be a non-empty base64 string"
    try:
        raw = base64.b64decode(ct, validate=True)
    except (binascii.Error, ValueError):
        return "the ciphertext is not valid base64"
    if len(raw) < _SIV_TAG_BYTES:
        return "the ciphertext is shorter than its authentication tag"
    return None


def check_key_group(group: Any, where: str) -> str:
    """A key group name as used in ``seal=`` options and key references."""
    if not isinstance(group, str) or not KEY_GROUP.match(group):
        raise SealError(
            f"{where}: key group {group!r} must be 1-64 letters, digits, '.', '_' or '-' "
            "(starting with a letter or digit), e.g. 'eu-sites'"
        )
    return group


class KeyRing:
    """Named sealing keys. ``repr`` and error messages show group names, never key material."""

    def __init__(self, keys: Mapping[str, bytes] | None = None) -> None:
        self._keys: dict[str, bytes] = {}
        for group, key in (keys or {}).items():
            check_key_group(group, "sealing keys")
            self._keys[group] = expand_key(key, group)

    @classmethod
    def from_references(cls, references: Mapping[str, str]) -> KeyRing:
        """Load ``{group: "file:/path"}``; SealError for a bad name, reference or key file."""
        keys: dict[str, bytes] = {}
        for group, reference in references.items():
            check_key_group(group, "sealing keys")
            scheme, sep, path = str(reference).partition(":")
            if scheme != "file" or not sep or not path.strip():
                raise SealError(
                    f"key group {group!r}: key reference {str(reference)[:200]!r} must be "
                    "'file:/path/to/key' (a file written by `meridian seal-key new`)"
                )
            keys[group] = read_key_file(Path(path.strip()).expanduser(), group)
        return cls(keys)

    @classmethod
    def from_spec(cls, spec: str) -> KeyRing:
        """Parse ``"eu-sites=file:/etc/meridian/eu.key,us=file:/etc/meridian/us.key"``."""
        references: dict[str, str] = {}
        for item in (part.strip() for part in spec.split(",")):
            if not item:
                continue
            group, sep, reference = item.partition("=")
            if not sep:
                raise SealError(f"{ENV_KEYS}: entry {item[:200]!r} must be GROUP=file:/path/to/key")
            references[group.strip()] = reference.strip()
        return cls.from_references(references)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> KeyRing:
        """The keys named by ``$MERIDIAN_SEAL_KEYS`` (empty when it is unset)."""
        env = os.environ if environ is None else environ
        return cls.from_spec(env.get(ENV_KEYS, ""))

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(sorted(self._keys))

    def __contains__(self, group: object) -> bool:
        return group in self._keys

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __repr__(self) -> str:
        return f"KeyRing(groups={list(self.groups)!r})"

    def require(self, group: str, holder: str = "this process") -> None:
        """SealError unless this ring holds ``group``; says how to add it."""
        if group not in self._keys:
            held = ", ".join(self.groups) or "none"
            raise SealError(
                f"{holder} has no key for key group {group!r} (it holds: {held}); a flow runner "
                f'gets it from {ENV_KEYS}="{group}=file:/path/to/key", an agent from '
                f'[sealing.keys] {group} = "file:/path/to/key" in its config file'
            )

    def fingerprint(self, group: str) -> str:
        """A short public identifier of the key, to check two holders have the same one."""
        self.require(group)
        return fingerprint(self._keys[group])

    def derive_key(self, group: str, info: bytes, salt: bytes | None = None) -> bytes:
        """A 256-bit key for another cipher, derived from ``group``'s key with HKDF-SHA256
        (``info`` names its use, e.g. ``meridian.core.sealedfile``); never the key itself."""
        self.require(group)
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info)
        return hkdf.derive(self._keys[group])

    def seal(
        self, group: str, plaintext: bytes, purpose: str, flow_run_id: str, step_key: str
    ) -> Envelope:
        self.require(group)
        what = _WHAT.get(purpose, purpose)
        if len(plaintext) > MAX_PLAINTEXT_BYTES:
            raise SealError(
                f"the {what} to seal with key group {group!r} is {len(plaintext)} bytes, above "
                f"the limit of {MAX_PLAINTEXT_BYTES} for sealed values; pass a reference (a path "
                "or URL) instead of the data"
            )
        ad = _associated_data(purpose, group, flow_run_id, step_key)
        return Envelope(group, _aead(self._keys[group]).encrypt(plaintext, ad))

    def open(self, envelope: Envelope, purpose: str, flow_run_id: str, step_key: str) -> bytes:
        group = envelope.key_group
        self.require(group)
        from cryptography.exceptions import InvalidTag

        ad = _associated_data(purpose, group, flow_run_id, step_key)
        try:
            return _aead(self._keys[group]).decrypt(envelope.ciphertext, ad)
        except InvalidTag:
            where = f"step {step_key!r}" if step_key else "the flow run"
            raise SealError(
                f"the sealed {_WHAT.get(purpose, purpose)} of {where} did not authenticate "
                f"with key group {group!r}: the key differs from the one that sealed it, or the "
                "value was altered or moved from another step or run"
            ) from None


def _associated_data(purpose: str, group: str, flow_run_id: str, step_key: str) -> list[bytes]:
    # S2V authenticates each element separately, so no separator can be forged.
    return [purpose.encode(), group.encode(), flow_run_id.encode(), step_key.encode()]


def _aead(key: bytes) -> Any:
    # Imported here: every step module imports the SDK, and most steps never seal anything.
    from cryptography.hazmat.primitives.ciphers.aead import AESSIV

    return AESSIV(key)


# ---- sealed inputs -----------------------------------------------------------------------------


def seal_inputs(
    keys: KeyRing, group: str, inputs_json: str, flow_run_id: str, step_key: str
) -> str:
    """``{"args": [], "kwargs": {}, "sealed": ENVELOPE}`` for a step's inputs JSON."""
    envelope = keys.seal(group, inputs_json.encode(), INPUTS, flow_run_id, step_key)
    return _dumps({"args": [], "kwargs": {}, "sealed": envelope.to_value()})


def inputs_key_group(inputs_json: str) -> str | None:
    """The key group of sealed inputs, or None when they are plain. SealError if malformed."""
    if '"sealed"' not in inputs_json:
        return None
    try:
        value = json.loads(inputs_json)
    except ValueError:
        return None  # not ours to judge: whoever decodes the inputs reports it
    if not isinstance(value, dict) or "sealed" not in value:
        return None
    return Envelope.from_value(value["sealed"]).key_group


def sealed_inputs_problem(inputs: Mapping[str, Any]) -> str | None:
    """Why decoded inputs with a ``sealed`` member are not well-formed sealed inputs."""
    if inputs.get("args", []) != [] or inputs.get("kwargs", {}) != {}:
        return "sealed inputs must have empty args and kwargs"
    return envelope_problem(inputs["sealed"])


def open_inputs(keys: KeyRing, inputs_json: str, flow_run_id: str, step_key: str) -> str:
    """The plain inputs JSON inside sealed inputs. SealError without the key or if altered."""
    value = json.loads(inputs_json)
    envelope = Envelope.from_value(value["sealed"])
    return _decode(keys.open(envelope, INPUTS, flow_run_id, step_key), "inputs", step_key)


# ---- sealed texts: results and error texts -----------------------------------------------------


def seal_text(
    keys: KeyRing, group: str, text: str, purpose: str, flow_run_id: str, step_key: str
) -> str:
    """``{"$sealed": ENVELOPE}`` (valid JSON); the empty text stays empty."""
    if not text:
        return ""
    envelope = keys.seal(group, text.encode(), purpose, flow_run_id, step_key)
    return _dumps({"$sealed": envelope.to_value()})


def sealed_envelope(text: str) -> Envelope | None:
    """The envelope of a sealed text, or None when ``text`` is not one."""
    if not text.startswith(_SEALED_TEXT_PREFIX):
        return None
    try:
        value = json.loads(text)
        if not isinstance(value, dict) or set(value) != {"$sealed"}:
            return None
        return Envelope.from_value(value["$sealed"])
    except (ValueError, SealError):
        return None


def open_text(
    keys: KeyRing, text: str, purpose: str, flow_run_id: str, step_key: str, group: str
) -> str:
    """The plaintext of a text sealed with ``group``. SealError when it is not sealed (the
    value was replaced), sealed with another group, or does not authenticate."""
    envelope = sealed_envelope(text)
    what = _WHAT.get(purpose, purpose)
    where = f"step {step_key!r}" if step_key else "the flow run"
    if envelope is None:
        raise SealError(
            f"the {what} of {where} should be sealed with key group {group!r} but arrived "
            "unsealed; it was not produced by an agent holding the key"
        )
    if envelope.key_group != group:
        raise SealError(
            f"the {what} of {where} is sealed with key group {envelope.key_group!r}, "
            f"expected {group!r}"
        )
    return _decode(keys.open(envelope, purpose, flow_run_id, step_key), what, step_key)


def seal_error_texts(
    keys: KeyRing, group: str, message: str, traceback: str, flow_run_id: str, step_key: str
) -> tuple[str, str]:
    """Seal an error's message (its head) and traceback (its tail) within the stored limits."""
    message = _head(message, MAX_SEALED_MESSAGE_BYTES)
    traceback = _tail(traceback, MAX_SEALED_TRACEBACK_BYTES)
    return (
        seal_text(keys, group, message, ERROR_MESSAGE, flow_run_id, step_key),
        seal_text(keys, group, traceback, ERROR_TRACEBACK, flow_run_id, step_key),
    )


def open_error_text(
    keys: KeyRing, text: str, purpose: str, flow_run_id: str, step_key: str, group: str
) -> str:
    """An error text as readable as it can be: opened if sealed, else a note saying why not.

    Error texts of sealed steps are sealed only when the step's own code failed; failures the
    agent or provider reports (timeouts, lost agents, missing keys) stay plain.
    """
    if sealed_envelope(text) is None:
        return text
    try:
        return open_text(keys, text, purpose, flow_run_id, step_key, group)
    except SealError as exc:
        return f"[sealed {_WHAT.get(purpose, purpose)} could not be opened: {exc}]"


# ---- what people see instead of sealed values --------------------------------------------------


def mask_sealed(text: str) -> str:
    """``text`` with each sealed value in it (even one cut short) shown as ``[sealed: GROUP]``."""
    if _SEALED_TEXT_PREFIX not in text:
        return text
    text = _SEALED_PATTERN.sub(lambda m: f"[sealed: {m.group(1)}]", text)

    def cut(match: re.Match[str]) -> str:
        group = _CUT_GROUP.search(match.group(0))
        return f"[sealed: {group.group(1)}]" if group else "[sealed]"

    return _CUT_PATTERN.sub(cut, text)


def describe_sealed(text: str) -> dict[str, Any] | None:
    """For a sealed text: its key group, the SHA-256 of the stored text (as in the audit
    records) and its size; None when ``text`` is not sealed."""
    envelope = sealed_envelope(text)
    if envelope is None:
        return None
    return {
        "key_group": envelope.key_group,
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
        "bytes": len(text.encode()),
    }


# ---- helpers -----------------------------------------------------------------------------------


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _decode(plaintext: bytes, what: str, step_key: str) -> str:
    try:
        return plaintext.decode()
    except UnicodeDecodeError:
        raise SealError(f"the opened {what} of step {step_key!r} is not UTF-8 text") from None


def _head(text: str, limit: int) -> str:
    raw = text.encode()
    if len(raw) <= limit:
        return text
    marker = "...[message truncated]"
    return raw[: limit - len(marker)].decode(errors="ignore") + marker


def _tail(text: str, limit: int) -> str:
    raw = text.encode()
    if len(raw) <= limit:
        return text
    marker = "...[traceback truncated]\n"
    return marker + raw[len(raw) - (limit - len(marker)) :].decode(errors="ignore")
