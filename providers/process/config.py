"""The ``process`` provider's config keys, per-step options and the step's environment.

What the provider accepts is checked here, before anything is started, with messages that name
the key at fault.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from providers.base import ProviderError

CONFIG_KEYS = frozenset({"python", "kill_grace_s", "env"})
OPTIONS_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "properties": {
        "env": {"type": "object", "additionalProperties": {"type": "string"}},
        "cwd": {"type": "string", "description": "relative paths start at the bundle dir"},
    },
    "additionalProperties": False,
}


def string_map(value: Any, what: str, error: type[ProviderError]) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise error(f"{what} must be an object of strings, not {type(value).__name__}")
    for key, item in value.items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            raise error(f"{what}: {key!r} is not a valid environment variable name")
        if not isinstance(item, str) or "\0" in item:
            raise error(f"{what}: the value of {key!r} must be a string, not {item!r}")
    return dict(value)


def meridian_root() -> str:
    """The directory holding the ``meridian`` package, found without importing it."""
    spec = importlib.util.find_spec("meridian")
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / "stepexec.py").is_file():
            return str(Path(location).parent)
    raise ProviderError("cannot find meridian.stepexec; is meridian-orchestrator installed?")


def write_json_atomic(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(value, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
