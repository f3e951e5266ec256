"""The ``process`` provider's config keys, per-step options and the step's environment.

What the provider accepts is checked here, before anything is started, with messages that name
the key at fault.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from providers.base import ExecutionSpec, ProviderError

CONFIG_KEYS = frozenset(
    {"python", "kill_grace_s", "env", "warm_workers", "worker_max_steps", "worker_max_rss_mib"}
)
DEFAULT_WARM_WORKERS = 4  # the agent's default --capacity; the agent passes its own
DEFAULT_WORKER_MAX_STEPS = 100
DEFAULT_WORKER_MAX_RSS_MIB = 512.0
MAX_WARM_WORKERS = 4096
ISOLATIONS = ("warm", "process")
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


@dataclass(frozen=True)
class PoolConfig:
    """The warm-worker pool's settings (``providers/process/pool.py``); size 0 = no pool."""

    size: int = DEFAULT_WARM_WORKERS
    max_steps: int = DEFAULT_WORKER_MAX_STEPS
    max_rss_mib: float = DEFAULT_WORKER_MAX_RSS_MIB

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> PoolConfig:
        size = _integer(config, "warm_workers", DEFAULT_WARM_WORKERS, 0, MAX_WARM_WORKERS)
        steps = _integer(config, "worker_max_steps", DEFAULT_WORKER_MAX_STEPS, 1, 1_000_000)
        rss = config.get("worker_max_rss_mib", DEFAULT_WORKER_MAX_RSS_MIB)
        if isinstance(rss, bool) or not isinstance(rss, int | float) or not 0 < rss < 2**40:
            raise ProviderError(
                f"process provider: worker_max_rss_mib must be a number > 0, not {rss!r}"
            )
        return cls(size=size, max_steps=steps, max_rss_mib=float(rss))


def _integer(config: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ProviderError(
            f"process provider: {key} must be an integer from {low} to {high}, not {value!r}"
        )
    return value


def meridian_root() -> str:
    """The directory holding the ``meridian`` package, found without importing it."""
    spec = importlib.util.find_spec("meridian")
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / "stepexec.py").is_file():
            return str(Path(location).parent)
    raise ProviderError("cannot find meridian.stepexec; is meridian-orchestrator installed?")


def write_json_atomic(path: Path, value: Any) -> None:
    """Write ``value`` whole or not at all (temp file + rename). No fsync: the step process
    reads the file at once, the page cache outlives an agent crash, and after a host crash
    the step is gone anyway (its handle then says lost); an fsync here cost every step
    milliseconds on the agent's event loop."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(value, fh)
    os.replace(tmp, path)


def worker_environment(config_env: Mapping[str, str]) -> dict[str, str]:
    """A warm worker's own environment; each step gets its own (``step_environment``)."""
    env = {**os.environ, **config_env}
    path = [meridian_root(), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
    env["PYTHONPATH"] = os.pathsep.join(path)
    return env


def step_environment(config_env: Mapping[str, str], spec: ExecutionSpec) -> dict[str, str]:
    """The step's whole environment: the agent's, config ``env``, option ``env``, resolved
    secrets, the bundle and ``meridian`` on ``PYTHONPATH`` and the ``MERIDIAN_*`` names."""
    env = dict(os.environ)
    env.update(config_env)
    env.update(spec.options.get("env", {}))
    env.update(spec.env)
    path = [str(spec.bundle_dir.resolve())] if spec.bundle_dir else []
    path.append(meridian_root())  # stepexec must import even from a bare bundle
    if env.get("PYTHONPATH"):
        path.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(path)
    env["MERIDIAN_ATTEMPT_ID"] = spec.attempt_id
    env["MERIDIAN_FLOW_RUN_ID"] = spec.flow_run_id
    env["MERIDIAN_STEP_KEY"] = spec.step_key
    return env
