"""The resolver contract and the small helpers every resolver shares."""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

from agent.secrets._errors import SecretConfigError, SecretNotFound, SecretUnavailable


@runtime_checkable
class SecretResolver(Protocol):
    """Turns the part of a reference after ``scheme:`` into the secret's value.

    ``resolve`` is synchronous (cloud SDKs are) and is called from a worker thread, once per
    reference per attempt. It raises ``SecretNotFound`` or ``SecretUnavailable`` with a reason
    that never contains the value, and must not cache values: a rotated secret has to be
    picked up by the next attempt.
    """

    scheme: str

    def resolve(self, what: str) -> str:
        """Return the value named by ``what``."""
        ...


def lazy_import(module: str, scheme: str, extra: str) -> ModuleType:
    """Import an optional SDK only when a step needs it, with an error naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise SecretUnavailable(
            f"{scheme} secrets need the {module.split('.')[0]} package on the agent: "
            f"install meridian-orchestrator[{extra}]"
        ) from exc


def split_json_key(what: str) -> tuple[str, str | None]:
    """``name#key`` -> (name, key); cloud secret names cannot contain ``#``."""
    name, sep, key = what.partition("#")
    if sep and not key:
        raise SecretNotFound("the JSON key after '#' is empty")
    return name, key if sep else None


def extract_json_key(text: str, key: str) -> str:
    """The value of ``key`` in a secret holding a JSON object (non-strings are re-encoded)."""
    try:
        document = json.loads(text)
    except ValueError:
        # The parser's message may quote the secret's text: never pass it on.
        raise SecretNotFound(f"asked for JSON key {key!r} but the secret is not JSON") from None
    if not isinstance(document, dict):
        raise SecretNotFound(f"asked for JSON key {key!r} but the secret is not a JSON object")
    if key not in document:
        raise SecretNotFound(f"the secret's JSON object has no key {key!r}")
    value = document[key]
    return value if isinstance(value, str) else json.dumps(value)


def decode_text(data: bytes) -> str:
    """Secrets become environment variables, so they must be UTF-8 text without NUL."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretNotFound("the secret is not UTF-8 text") from None
    return check_text(text)


def check_text(text: str) -> str:
    if "\0" in text:
        raise SecretNotFound("the secret contains a NUL character (not allowed in environment)")
    return text


def config_keys(scheme: str, config: Mapping[str, Any], known: frozenset[str]) -> Mapping[str, Any]:
    """Refuse unknown keys so a typo in the agent's configuration fails at start-up."""
    if not isinstance(config, Mapping):
        raise SecretConfigError(f"secrets config for {scheme!r} must be a mapping")
    unknown = sorted(set(config) - known)
    if unknown:
        raise SecretConfigError(
            f"secrets config for {scheme!r} does not accept key(s) {', '.join(unknown)}; "
            f"known keys: {', '.join(sorted(known)) or 'none'}"
        )
    return config


def optional_str(config: Mapping[str, Any], key: str, scheme: str) -> str | None:
    value = config.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise SecretConfigError(f"secrets config for {scheme!r}: {key} must be a non-empty string")
    return value


def positive_float(config: Mapping[str, Any], key: str, scheme: str, default: float) -> float:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise SecretConfigError(f"secrets config for {scheme!r}: {key} must be a positive number")
    return float(value)
