"""Configuration, options and state reading of the ``gcp-cloud-run`` provider.

Kept apart from ``provider.py`` so that module stays about the verbs. Nothing here
imports a Google library at import time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from providers.base import ProviderError, ProviderOptionsError

STEP_ARGS = ("meridian-step", "--spec-env", "MERIDIAN_STEP_SPEC")
SPEC_ENV = "MERIDIAN_STEP_SPEC"

OPTIONS_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "properties": {
        "job": {"type": "string", "minLength": 1, "description": "job name or full resource name"},
        "command": {
            "type": "array",
            "items": {"type": "string"},
            "minItems": 1,
            "description": "plain command step: becomes the container's args override",
        },
        "env": {"type": "object", "additionalProperties": {"type": "string"}},
        "task_count": {"type": "integer", "minimum": 1, "maximum": 10000},
        "code_dir": {"type": "string", "minLength": 1, "description": "code baked in the image"},
    },
    "additionalProperties": False,
}


@dataclass(frozen=True)
class CloudRunConfig:
    """Provider config. Only ``project`` and ``region`` are required.

    ``endpoint``/``insecure``/``credentials``/``channel`` exist for tests and private endpoints:
    production leaves them unset and the SDK uses ``run.googleapis.com`` with application
    default credentials (workload identity on GKE, the VM's service account, ...).
    ``channel`` is a ``grpc.aio.Channel`` or a zero-argument factory of one (a factory lets the
    provider make a fresh channel per event loop). ``log_source`` is a ``LogSource``; by default
    ``CloudLoggingSource`` built on the same credentials.
    """

    project: str
    region: str
    job: str | None = None
    container_name: str | None = None
    poll_interval_s: float = 2.0
    kill_grace_s: float = 15.0
    log_settle_s: float = 30.0
    code_dir: str = "/app"
    endpoint: str | None = None
    insecure: bool = False
    credentials: Any = None
    channel: Any = None
    log_source: Any = None
    logging_endpoint: str | None = None

    _FLOATS: ClassVar[tuple[str, ...]] = ("poll_interval_s", "kill_grace_s", "log_settle_s")
    _STRINGS: ClassVar[tuple[str, ...]] = (
        "job",
        "container_name",
        "code_dir",
        "endpoint",
        "logging_endpoint",
    )

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> CloudRunConfig:
        known = set(cls.__dataclass_fields__) - {"_FLOATS", "_STRINGS"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ProviderError(
                f"gcp-cloud-run provider does not accept config key(s) {', '.join(unknown)}; "
                f"known keys: {', '.join(sorted(known))}"
            )
        values = dict(raw)
        for key in ("project", "region"):
            if not isinstance(values.get(key), str) or not values[key]:
                raise ProviderError(f"gcp-cloud-run provider: config {key!r} is required")
        for key in cls._STRINGS:
            if values.get(key) is not None and (
                not isinstance(values[key], str) or not values[key]
            ):
                raise ProviderError(f"gcp-cloud-run provider: config {key!r} must be a string")
        for key in cls._FLOATS:
            if key in values:
                try:
                    values[key] = float(values[key])
                except (TypeError, ValueError) as exc:
                    raise ProviderError(
                        f"gcp-cloud-run provider: config {key!r} must be a number: {exc}"
                    ) from exc
                if not math.isfinite(values[key]) or values[key] < 0:
                    raise ProviderError(f"gcp-cloud-run provider: config {key!r} must be >= 0")
        if values.get("poll_interval_s") == 0:
            raise ProviderError("gcp-cloud-run provider: config 'poll_interval_s' must be > 0")
        if not str(values.get("code_dir", "/")).startswith("/"):
            raise ProviderError("gcp-cloud-run provider: config 'code_dir' must be absolute")
        if not isinstance(values.get("insecure", False), bool):
            raise ProviderError("gcp-cloud-run provider: config 'insecure' must be a boolean")
        if values.get("insecure") and not values.get("endpoint"):
            raise ProviderError("gcp-cloud-run provider: 'insecure' needs an 'endpoint'")
        channel = values.get("channel")
        if channel is not None and not callable(channel) and not hasattr(channel, "unary_unary"):
            raise ProviderError("gcp-cloud-run provider: 'channel' must be a grpc.aio channel")
        return cls(**values)

    def job_name(self, job: str) -> str:
        """The full resource name of ``job`` (a short name is placed in project/region)."""
        if job.startswith("projects/"):
            return job
        return f"projects/{self.project}/locations/{self.region}/jobs/{job}"


def _strings(value: Any, what: str) -> None:
    if not isinstance(value, list) or not value:
        raise ProviderOptionsError(f"option {what!r} must be a non-empty list of strings")
    for item in value:
        if not isinstance(item, str):
            raise ProviderOptionsError(f"option {what!r}: {item!r} is not a string")


def _env(value: Any) -> None:
    if not isinstance(value, Mapping):
        raise ProviderOptionsError(
            f"option 'env' must be an object of strings, not {type(value).__name__}"
        )
    for key, item in value.items():
        if not isinstance(key, str) or not key or "=" in key:
            raise ProviderOptionsError(f"option 'env': {key!r} is not a valid variable name")
        if key.startswith("MERIDIAN_"):
            raise ProviderOptionsError(f"option 'env': {key!r} is reserved for Meridian")
        if not isinstance(item, str):
            raise ProviderOptionsError(f"option 'env': the value of {key!r} must be a string")


def validate_options(options: Mapping[str, Any], default_job: str | None) -> None:
    """Type and value checks beyond unknown keys (the base class checks those first)."""
    job = options.get("job", default_job)
    if not isinstance(job, str) or not job:
        raise ProviderOptionsError(
            "option 'job' must name the Cloud Run job to run (no 'job' in the provider config)"
        )
    if "command" in options:
        _strings(options["command"], "command")
    if "env" in options:
        _env(options["env"])
    count = options.get("task_count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 10000:
        raise ProviderOptionsError(
            f"option 'task_count' must be an integer 1..10000, not {count!r}"
        )
    if count > 1 and "command" not in options:
        raise ProviderOptionsError(
            "option 'task_count' > 1 needs 'command': a Python step is one call with one result"
        )
    code_dir = options.get("code_dir", "/app")
    if not isinstance(code_dir, str) or not code_dir.startswith("/"):
        raise ProviderOptionsError(f"option 'code_dir' must be an absolute path, not {code_dir!r}")
