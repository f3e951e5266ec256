"""Configuration, per-step options and job requests of the ``ray`` provider.

Kept apart from ``provider.py`` so that module holds only the verbs. Nothing here
imports Ray: these are plain values turned into ``JobSubmissionClient.submit_job`` arguments.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from providers.base import ExecutionSpec, ProviderError, ProviderOptionsError
from providers.shared.outcome import SPEC_FILE

SPEC_ENV = "MERIDIAN_STEP_SPEC"

OPTIONS_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "properties": {
        "command": {
            "type": "array",
            "items": {"type": "string"},
            "minItems": 1,
            "description": "run this command instead of a Python step (result null)",
        },
        "env": {"type": "object", "additionalProperties": {"type": "string"}},
        "num_cpus": {"type": "number", "minimum": 0, "description": "entrypoint_num_cpus"},
        "num_gpus": {"type": "number", "minimum": 0, "description": "entrypoint_num_gpus"},
        "memory": {"type": "integer", "minimum": 0, "description": "entrypoint_memory, bytes"},
        "resources": {
            "type": "object",
            "additionalProperties": {"type": "number", "minimum": 0},
            "description": "entrypoint_resources (custom Ray resources)",
        },
        "upload_bundle": {
            "type": "boolean",
            "description": "ship the bundle as the job's working_dir (clusters without a "
            "shared filesystem); the outcome then comes back through the job logs",
        },
    },
    "additionalProperties": False,
}


def _number(raw: Mapping[str, Any], key: str, default: float, minimum: float) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise ProviderError(f"ray provider: config {key!r} must be a number >= {minimum:g}")
    return float(value)


def string_map(value: Any, what: str, error: type[ProviderError]) -> dict[str, str]:
    """``value`` as a str -> str dict, or ``error`` saying what is wrong with it."""
    if not isinstance(value, Mapping):
        raise error(f"{what} must be an object of strings, not {type(value).__name__}")
    for key, item in value.items():
        if not isinstance(key, str) or not key or "\0" in key:
            raise error(f"{what}: {key!r} is not a valid name")
        if not isinstance(item, str):
            raise error(f"{what}: the value of {key!r} must be a string, not {item!r}")
    return dict(value)


@dataclass(frozen=True)
class RayConfig:
    """The provider's config.

    ``address``: the job server (dashboard) URL, e.g. ``http://head:8265``; None lets the SDK
    decide (``RAY_ADDRESS``, then a local cluster). ``headers``: sent with every request (e.g.
    ``Authorization: Bearer <token>`` for token auth). ``verify``: TLS CA bundle path, or a bool.
    ``python``: the interpreter the cluster runs the step with (it must import meridian).
    """

    address: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    verify: bool | str = True
    python: str = "python"
    poll_interval_s: float = 1.0
    kill_grace_s: float = 5.0
    request_timeout_s: float = 30.0

    KEYS = frozenset(
        {"address", "headers", "verify", "python", "poll_interval_s", "kill_grace_s"}
        | {"request_timeout_s"}
    )

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> RayConfig:
        unknown = sorted(set(raw) - cls.KEYS)
        if unknown:
            raise ProviderError(
                f"ray provider does not accept config key(s) {', '.join(unknown)}; "
                f"known keys: {', '.join(sorted(cls.KEYS))}"
            )
        address = raw.get("address")
        if address is not None and (not isinstance(address, str) or not address.strip()):
            raise ProviderError(f"ray provider: config 'address' must be a URL, not {address!r}")
        verify = raw.get("verify", True)
        if not isinstance(verify, bool | str):
            raise ProviderError("ray provider: config 'verify' must be a bool or a CA bundle path")
        python = raw.get("python", "python")
        if not isinstance(python, str) or not python:
            raise ProviderError("ray provider: config 'python' must be a non-empty string")
        return cls(
            address=address.rstrip("/") if address else None,
            headers=string_map(raw.get("headers", {}), "config 'headers'", ProviderError),
            verify=verify,
            python=python,
            poll_interval_s=_number(raw, "poll_interval_s", 1.0, 0.01),
            kill_grace_s=_number(raw, "kill_grace_s", 5.0, 0.0),
            request_timeout_s=_number(raw, "request_timeout_s", 30.0, 0.1),
        )


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
    string_map(options.get("env", {}), "option 'env'", ProviderOptionsError)
    for key in ("num_cpus", "num_gpus", "memory"):
        value = options.get(key)
        if value is None:
            continue
        kind = int if key == "memory" else int | float
        if isinstance(value, bool) or not isinstance(value, kind) or value < 0:
            what = "an integer (bytes)" if key == "memory" else "a number"
            raise ProviderOptionsError(f"option {key!r} must be {what} >= 0, not {value!r}")
    resources = options.get("resources", {})
    if not isinstance(resources, Mapping) or not all(
        isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool) and v >= 0
        for k, v in resources.items()
    ):
        raise ProviderOptionsError(
            f"option 'resources' must map names to numbers >= 0, not {resources!r}"
        )
    if not isinstance(options.get("upload_bundle", False), bool):
        raise ProviderOptionsError("option 'upload_bundle' must be true or false")


def code_root() -> str:
    """The directory holding the ``providers`` and ``meridian`` packages (one distribution)."""
    # This file is <root>/providers/ray/config.py.
    return str(Path(__file__).resolve().parents[2])


def _write_json_atomic(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(value, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def job_request(config: RayConfig, spec: ExecutionSpec, submission_id: str) -> dict[str, Any]:
    """The keyword arguments of ``submit_job`` for one attempt (writes spec.json if needed).

    Shared filesystem (default): the cluster reads ``spec.json`` from the attempt's work dir
    and writes ``outcome.json`` next to it; the bundle and meridian are found on PYTHONPATH by
    their paths on this machine. ``upload_bundle``: the bundle travels as the job's
    ``working_dir``, the spec in an env var, and the outcome as the result marker in the logs;
    meridian must be installed in the cluster's Python.
    """
    options = spec.options
    upload = bool(options.get("upload_bundle", False))
    env = {**options.get("env", {}), **spec.env}
    env.update(
        MERIDIAN_ATTEMPT_ID=spec.attempt_id,
        MERIDIAN_FLOW_RUN_ID=spec.flow_run_id,
        MERIDIAN_STEP_KEY=spec.step_key,
    )
    runtime_env: dict[str, Any] = {"env_vars": env}
    bundle = str(spec.bundle_dir.resolve()) if spec.bundle_dir else None
    if upload and bundle:
        runtime_env["working_dir"] = bundle
    elif not upload:
        env["PYTHONPATH"] = os.pathsep.join([*([bundle] if bundle else []), code_root()])
    step: dict[str, Any] = {
        "module": spec.module,
        "function": spec.function,
        "inputs_json": spec.inputs_json,
        "bundle_dir": "." if upload else bundle,  # uploaded: the working_dir is the job's cwd
        "step_key": spec.step_key,
        **spec.context_fields(),
        **spec.result_fields(),
    }
    command = options.get("command")
    if command is not None:
        argv = [str(arg) for arg in command]
    elif upload:
        env[SPEC_ENV] = json.dumps(step)
        argv = [config.python, "-m", "meridian.stepexec", "--spec-env", SPEC_ENV]
    else:
        work_dir = spec.work_dir.resolve()
        _write_json_atomic(work_dir / SPEC_FILE, step)
        argv = [config.python, "-m", "meridian.stepexec", "--work-dir", str(work_dir)]
        argv.append("--result-marker")
    entrypoint = shlex.join([config.python, "-m", "providers.ray.entry", "--", *argv])
    request: dict[str, Any] = {
        "entrypoint": entrypoint,
        "submission_id": submission_id,
        "runtime_env": runtime_env,
        "metadata": {
            "meridian_flow_run_id": spec.flow_run_id,
            "meridian_step_run_id": spec.step_run_id,
            "meridian_step_key": spec.step_key,
            "meridian_attempt_id": spec.attempt_id,
        },
    }
    for option, argument in (
        ("num_cpus", "entrypoint_num_cpus"),
        ("num_gpus", "entrypoint_num_gpus"),
        ("memory", "entrypoint_memory"),
    ):
        if options.get(option) is not None:
            request[argument] = options[option]
    if options.get("resources"):
        request["entrypoint_resources"] = {k: float(v) for k, v in options["resources"].items()}
    return request
