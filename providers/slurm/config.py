"""Config and per-step options of the ``slurm`` provider: typed, checked, documented.

Kept apart from ``providers.slurm.provider`` so the provider module holds only the verbs; see
docs/providers/slurm.md for what each key and option means on a cluster.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from providers.base import ProviderError, ProviderOptionsError

_TIME_RE = re.compile(r"^(\d+-\d+(:\d+){0,2}|\d+(:\d+){0,2}|UNLIMITED|INFINITE)$")
_MEMORY_RE = re.compile(r"^\d+[KMGT]?$")
_GPUS_RE = re.compile(r"^([A-Za-z0-9_.-]+:)?[1-9]\d*$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.@+-]+$")

OPTIONS_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "properties": {
        "command": {
            "type": "array",
            "items": {"type": "string"},
            "minItems": 1,
            "description": "run this command instead of a Python step (result null)",
        },
        "partition": {"type": "string", "description": "sbatch --partition"},
        "account": {"type": "string", "description": "sbatch --account"},
        "qos": {"type": "string", "description": "sbatch --qos"},
        "cpus": {"type": "integer", "minimum": 1, "description": "sbatch --cpus-per-task"},
        "memory": {
            "type": "string",
            "pattern": _MEMORY_RE.pattern,
            "description": "sbatch --mem, e.g. '512M' or '4G'",
        },
        "gpus": {
            "oneOf": [
                {"type": "integer", "minimum": 1},
                {"type": "string", "pattern": _GPUS_RE.pattern},
            ],
            "description": "sbatch --gpus: a count or 'type:count'",
        },
        "time_limit": {
            "oneOf": [
                {"type": "integer", "minimum": 1},
                {"type": "string", "pattern": _TIME_RE.pattern},
            ],
            "description": "sbatch --time: minutes, or a Slurm time such as '1:30:00'",
        },
        "env": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "additionalProperties": False,
}


def _number(raw: Mapping[str, Any], key: str, default: float, minimum: float) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise ProviderError(f"slurm provider: config {key!r} must be a number >= {minimum:g}")
    return float(value)


def _optional_str(raw: Mapping[str, Any], key: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise ProviderError(f"slurm provider: config {key!r} must be a non-empty string")
    return value


def string_map(value: Any, what: str, error: type[ProviderError]) -> dict[str, str]:
    """``value`` as an environment (str -> str), or ``error`` saying what is wrong with it."""
    if not isinstance(value, Mapping):
        raise error(f"{what} must be an object of strings, not {type(value).__name__}")
    for key, item in value.items():
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise error(f"{what}: {key!r} is not a valid environment variable name")
        if not isinstance(item, str) or "\0" in item:
            raise error(f"{what}: the value of {key!r} must be a string, not {item!r}")
    return dict(value)


@dataclass(frozen=True)
class SlurmConfig:
    """The provider's config.

    ``bin_dir``: where sbatch/scontrol/scancel live (None: ``PATH``). ``slurm_conf``: exported
    as ``SLURM_CONF`` to those commands (None: Slurm's default lookup). ``partition``,
    ``account``: defaults for every job. ``default_time_limit``: ``--time`` when a step has
    neither a timeout nor a ``time_limit`` option. ``extra_sbatch_args``: appended verbatim.
    ``shared_dir``: put job files under ``<shared_dir>/<attempt_id>`` instead of the attempt's
    work dir (when only that directory is shared with the compute nodes). ``python``: the
    interpreter on the compute nodes (it must import meridian).
    """

    bin_dir: Path | None = None
    slurm_conf: str | None = None
    partition: str | None = None
    account: str | None = None
    default_time_limit: str | None = None
    extra_sbatch_args: tuple[str, ...] = ()
    poll_interval_s: float = 2.0
    kill_grace_s: float = 10.0
    shared_dir: Path | None = None
    python: str = sys.executable
    command_timeout_s: float = 30.0

    KEYS = frozenset(
        {"bin_dir", "slurm_conf", "partition", "account", "default_time_limit"}
        | {"extra_sbatch_args", "poll_interval_s", "kill_grace_s", "shared_dir", "python"}
        | {"command_timeout_s"}
    )

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> SlurmConfig:
        unknown = sorted(set(raw) - cls.KEYS)
        if unknown:
            raise ProviderError(
                f"slurm provider does not accept config key(s) {', '.join(unknown)}; "
                f"known keys: {', '.join(sorted(cls.KEYS))}"
            )
        extra = raw.get("extra_sbatch_args", ())
        if isinstance(extra, str) or not all(isinstance(arg, str) for arg in extra):
            raise ProviderError(
                "slurm provider: config 'extra_sbatch_args' must be a list of strings"
            )
        limit = _optional_str(raw, "default_time_limit")
        if limit is not None and not _TIME_RE.match(limit):
            raise ProviderError(
                f"slurm provider: config 'default_time_limit' {limit!r} is not a Slurm time "
                "(minutes, 'H:MM:SS' or 'D-HH:MM:SS')"
            )
        bin_dir, shared = _optional_str(raw, "bin_dir"), _optional_str(raw, "shared_dir")
        return cls(
            bin_dir=Path(bin_dir) if bin_dir else None,
            slurm_conf=_optional_str(raw, "slurm_conf"),
            partition=_optional_str(raw, "partition"),
            account=_optional_str(raw, "account"),
            default_time_limit=limit,
            extra_sbatch_args=tuple(extra),
            poll_interval_s=_number(raw, "poll_interval_s", 2.0, 0.05),
            kill_grace_s=_number(raw, "kill_grace_s", 10.0, 0.0),
            shared_dir=Path(shared) if shared else None,
            python=_optional_str(raw, "python") or sys.executable,
            command_timeout_s=_number(raw, "command_timeout_s", 30.0, 1.0),
        )

    def binary(self, name: str) -> str:
        return str(self.bin_dir / name) if self.bin_dir else name

    def client_env(self) -> dict[str, str]:
        """The environment of sbatch/scontrol/scancel (and so of the job: sbatch exports it)."""
        env = dict(os.environ)
        if self.slurm_conf:
            env["SLURM_CONF"] = self.slurm_conf
        return env


def validate_options(options: Mapping[str, Any]) -> None:
    """Type and value checks beyond the unknown-key check of ``Provider.validate_options``."""
    command = options.get("command")
    if command is not None and (
        not isinstance(command, list)
        or not command
        or not all(isinstance(arg, str) and "\0" not in arg for arg in command)
    ):
        raise ProviderOptionsError(
            f"option 'command' must be a non-empty list of strings, not {command!r}"
        )
    for key in ("partition", "account", "qos"):
        value = options.get(key)
        if value is not None and (not isinstance(value, str) or not _NAME_RE.match(value)):
            raise ProviderOptionsError(f"option {key!r} must be a Slurm name, not {value!r}")
    cpus = options.get("cpus")
    if cpus is not None and (isinstance(cpus, bool) or not isinstance(cpus, int) or cpus < 1):
        raise ProviderOptionsError(f"option 'cpus' must be an integer >= 1, not {cpus!r}")
    memory = options.get("memory")
    if memory is not None and (not isinstance(memory, str) or not _MEMORY_RE.match(memory)):
        raise ProviderOptionsError(
            f"option 'memory' must be a size such as '512M' or '4G', not {memory!r}"
        )
    gpus = options.get("gpus")
    if gpus is not None and not _positive_int_or(gpus, _GPUS_RE):
        raise ProviderOptionsError(
            f"option 'gpus' must be a count >= 1 or 'type:count', not {gpus!r}"
        )
    limit = options.get("time_limit")
    if limit is not None and not _positive_int_or(limit, _TIME_RE):
        raise ProviderOptionsError(
            f"option 'time_limit' must be minutes >= 1 or a Slurm time such as '1:30:00', "
            f"not {limit!r}"
        )
    string_map(options.get("env", {}), "option 'env'", ProviderOptionsError)


def _positive_int_or(value: Any, pattern: re.Pattern[str]) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value >= 1
    return isinstance(value, str) and bool(pattern.match(value))
