"""The Kubernetes provider's config model, per-step options and Job manifest.

Pure functions and values, no SDK import: everything here is testable without a cluster and
without the ``kubernetes`` extra. ``providers.kubernetes`` turns the manifest dict into the
client's ``V1Job`` model and talks to the API server.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from providers.base import ExecutionSpec, ProviderError, ProviderOptionsError

CONTAINER = "step"
SPEC_ENV = "MERIDIAN_STEP_SPEC"
STEP_COMMAND = ("meridian-step", "--spec-env", SPEC_ENV)
LABEL_PREFIX = "meridian.io"
# Linux refuses to exec with a single environment string over MAX_ARG_STRLEN (128 KiB).
MAX_SPEC_ENV_BYTES = 128 * 1024 - 1024

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUANTITY = re.compile(r"^(\d+(\.\d+)?|\.\d+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|[eE]\d+)?$")
_TOLERATION_KEYS = frozenset({"key", "operator", "value", "effect", "tolerationSeconds"})

OPTIONS_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "properties": {
        "image": {"type": "string", "minLength": 1},
        "command": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "cpu": {"type": ["string", "number"], "description": "Kubernetes quantity, e.g. 500m"},
        "memory": {"type": ["string", "integer"], "description": "quantity, e.g. 512Mi"},
        "gpu": {"type": "integer", "minimum": 0, "description": "nvidia.com/gpu limit"},
        "env": {"type": "object", "additionalProperties": {"type": "string"}},
        "code_dir": {"type": "string", "description": "the bundle inside the image (/app)"},
        "node_selector": {"type": "object", "additionalProperties": {"type": "string"}},
        "tolerations": {"type": "array", "items": {"type": "object"}},
        "image_pull_policy": {"enum": ["Always", "IfNotPresent", "Never"]},
    },
    "additionalProperties": False,
}


@dataclass(frozen=True)
class KubernetesConfig:
    """Provider config. Production: ``in_cluster`` or a kubeconfig; tests inject ``host``."""

    namespace: str = "default"
    image: str | None = None
    service_account: str | None = None
    image_pull_secrets: tuple[str, ...] = ()
    code_dir: str = "/app"
    in_cluster: bool = False
    kubeconfig: str | None = None
    context: str | None = None
    host: str | None = None
    ca_cert: str | None = None
    verify_ssl: bool = True
    token: str | None = None
    poll_interval_s: float = 1.0
    kill_grace_s: float = 10.0
    image_pull_timeout_s: float = 120.0
    request_timeout_s: float = 30.0
    ttl_seconds_after_finished: int | None = 3600
    delete_after_completion: bool = False
    propagation_policy: str = "Foreground"

    _BOOLS: ClassVar[frozenset[str]] = frozenset(
        {"in_cluster", "verify_ssl", "delete_after_completion"}
    )
    _FLOATS: ClassVar[frozenset[str]] = frozenset(
        {"poll_interval_s", "kill_grace_s", "image_pull_timeout_s", "request_timeout_s"}
    )

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> KubernetesConfig:
        """Build and check the config; raises ProviderError naming the offending key."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ProviderError(
                f"kubernetes provider does not accept config key(s) {', '.join(unknown)}; "
                f"known keys: {', '.join(sorted(known))}"
            )
        values: dict[str, Any] = {}
        for key, value in raw.items():
            if value is None:
                continue
            if key in cls._BOOLS:
                if not isinstance(value, bool):
                    raise ProviderError(f"kubernetes config {key!r} must be true or false")
            elif key in cls._FLOATS:
                if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                    raise ProviderError(f"kubernetes config {key!r} must be a number >= 0")
                value = float(value)
            elif key == "ttl_seconds_after_finished":
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ProviderError(
                        "kubernetes config 'ttl_seconds_after_finished' must be an int >= 0"
                    )
            elif key == "image_pull_secrets":
                if not isinstance(value, list | tuple) or not all(
                    isinstance(s, str) and s for s in value
                ):
                    raise ProviderError(
                        "kubernetes config 'image_pull_secrets' must be a list of names"
                    )
                value = tuple(value)
            elif not isinstance(value, str) or not value:
                raise ProviderError(f"kubernetes config {key!r} must be a non-empty string")
            values[key] = value
        config = cls(**values)
        if not _DNS_LABEL.match(config.namespace):
            raise ProviderError(
                f"kubernetes config 'namespace' {config.namespace!r} is not a DNS label"
            )
        if config.propagation_policy not in ("Foreground", "Background"):
            raise ProviderError(
                "kubernetes config 'propagation_policy' must be Foreground or Background"
            )
        if config.host and config.in_cluster:
            raise ProviderError("kubernetes config: set either 'host' or 'in_cluster', not both")
        if config.poll_interval_s <= 0:
            raise ProviderError("kubernetes config 'poll_interval_s' must be > 0")
        return config


# ---- options -------------------------------------------------------------------------------


def _string_map(value: Any, what: str) -> None:
    if not isinstance(value, Mapping):
        raise ProviderOptionsError(f"{what} must be an object of strings")
    for key, item in value.items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            raise ProviderOptionsError(f"{what}: {key!r} is not a valid name")
        if not isinstance(item, str) or "\0" in item:
            raise ProviderOptionsError(f"{what}: the value of {key!r} must be a string")


def _quantity(value: Any, what: str, *, integer: bool) -> None:
    if isinstance(value, bool):
        raise ProviderOptionsError(f"option {what!r} must be a quantity, not a boolean")
    if isinstance(value, int | float) and not (integer and isinstance(value, float)):
        if value <= 0 or not math.isfinite(value):
            raise ProviderOptionsError(f"option {what!r} must be > 0, not {value!r}")
        return
    if not isinstance(value, str) or not _QUANTITY.match(value):
        raise ProviderOptionsError(
            f"option {what!r}: {value!r} is not a Kubernetes quantity (e.g. 500m, 2, 512Mi, 4Gi)"
        )


def _tolerations(value: Any) -> None:
    if not isinstance(value, list):
        raise ProviderOptionsError("option 'tolerations' must be a list of objects")
    for item in value:
        if not isinstance(item, Mapping) or not item:
            raise ProviderOptionsError(f"option 'tolerations': {item!r} is not an object")
        unknown = sorted(set(item) - _TOLERATION_KEYS)
        if unknown:
            raise ProviderOptionsError(f"option 'tolerations': unknown key(s) {', '.join(unknown)}")
        if item.get("operator", "Equal") not in ("Equal", "Exists"):
            raise ProviderOptionsError("option 'tolerations': operator must be Equal or Exists")
        effect = item.get("effect")
        if effect is not None and effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
            raise ProviderOptionsError(f"option 'tolerations': unknown effect {effect!r}")
        for key in ("key", "value"):
            if key in item and not isinstance(item[key], str):
                raise ProviderOptionsError(f"option 'tolerations': {key!r} must be a string")
        seconds = item.get("tolerationSeconds")
        if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, int)):
            raise ProviderOptionsError("option 'tolerations': tolerationSeconds must be an integer")


def check_options(options: Mapping[str, Any]) -> None:
    """Type and value checks of the known options (unknown keys are the caller's check)."""
    image = options.get("image")
    if image is not None and (not isinstance(image, str) or not image.strip() or " " in image):
        raise ProviderOptionsError(f"option 'image' must be an image reference, not {image!r}")
    command = options.get("command")
    if command is not None and (
        not isinstance(command, list)
        or not command
        or not all(isinstance(c, str) and "\0" not in c for c in command)
    ):
        raise ProviderOptionsError("option 'command' must be a non-empty list of strings")
    if "cpu" in options:
        _quantity(options["cpu"], "cpu", integer=False)
    if "memory" in options:
        _quantity(options["memory"], "memory", integer=True)
    gpu = options.get("gpu")
    if gpu is not None and (isinstance(gpu, bool) or not isinstance(gpu, int) or gpu < 0):
        raise ProviderOptionsError(f"option 'gpu' must be an integer >= 0, not {gpu!r}")
    for key in ("env", "node_selector"):
        if key in options:
            _string_map(options[key], f"option {key!r}")
    code_dir = options.get("code_dir")
    if code_dir is not None and (not isinstance(code_dir, str) or not code_dir.startswith("/")):
        raise ProviderOptionsError(f"option 'code_dir' must be an absolute path, not {code_dir!r}")
    if "tolerations" in options:
        _tolerations(options["tolerations"])
    policy = options.get("image_pull_policy")
    if policy is not None and policy not in ("Always", "IfNotPresent", "Never"):
        raise ProviderOptionsError(f"option 'image_pull_policy': unknown policy {policy!r}")


# ---- names ---------------------------------------------------------------------------------


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:10]


def job_name(attempt_id: str) -> str:
    """A DNS-1123 label (<= 63 chars) unique to the attempt; a hash keeps lossy names apart."""
    clean = re.sub(r"[^a-z0-9-]+", "-", attempt_id.lower()).strip("-")
    name = f"meridian-{clean}".rstrip("-")
    if clean != attempt_id or len(name) > 63:
        name = f"{name[:52].rstrip('-')}-{_digest(attempt_id)}"
    return name


def label_value(value: str) -> str:
    """A valid label value (<= 63 chars, alphanumeric at both ends); full ids go in annotations."""
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", value).strip("._-")
    if clean == value and len(clean) <= 63:
        return clean
    head = clean[:52].strip("._-")
    return f"{head}-{_digest(value)}" if head else _digest(value)


# ---- the Job -------------------------------------------------------------------------------


def _resources(options: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    # Requests equal limits: the scheduler reserves what the step may use, and a memory
    # overrun is an OOMKill the provider can name rather than a noisy-neighbour eviction.
    amounts: dict[str, str] = {}
    for option, resource in (("cpu", "cpu"), ("memory", "memory"), ("gpu", "nvidia.com/gpu")):
        if options.get(option) is not None and options.get(option) != 0:
            amounts[resource] = str(options[option])
    return {"requests": dict(amounts), "limits": dict(amounts)} if amounts else {}


def step_spec_json(spec: ExecutionSpec, code_dir: str) -> str:
    """The ``MERIDIAN_STEP_SPEC`` document ``meridian-step --spec-env`` reads."""
    text = json.dumps(
        {
            "module": spec.module,
            "function": spec.function,
            "inputs_json": spec.inputs_json,
            "bundle_dir": code_dir,
            "step_key": spec.step_key,
        }
    )
    if len(text.encode("utf-8")) > MAX_SPEC_ENV_BYTES:
        raise ProviderError(
            f"step {spec.step_key!r}: its inputs are too large to pass in the Job "
            f"({len(text)} bytes, limit {MAX_SPEC_ENV_BYTES}); pass a reference instead"
        )
    return text


def build_job(spec: ExecutionSpec, config: KubernetesConfig) -> dict[str, Any]:
    """The batch/v1 Job manifest of one attempt (options already validated)."""
    options = spec.options
    image = options.get("image") or config.image
    if not image:
        raise ProviderOptionsError("no container image: set option 'image' or config 'image'")
    env: dict[str, str] = dict(options.get("env", {}))
    env.update(spec.env)
    env.update(
        {
            "MERIDIAN_ATTEMPT_ID": spec.attempt_id,
            "MERIDIAN_FLOW_RUN_ID": spec.flow_run_id,
            "MERIDIAN_STEP_RUN_ID": spec.step_run_id,
            "MERIDIAN_STEP_KEY": spec.step_key,
            SPEC_ENV: step_spec_json(spec, str(options.get("code_dir") or config.code_dir)),
        }
    )
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": image,
        "command": list(options.get("command") or STEP_COMMAND),
        "env": [{"name": k, "value": v} for k, v in env.items()],
    }
    if options.get("image_pull_policy"):
        container["imagePullPolicy"] = options["image_pull_policy"]
    resources = _resources(options)
    if resources:
        container["resources"] = resources
    labels = {
        "app.kubernetes.io/managed-by": "meridian",
        f"{LABEL_PREFIX}/flow-run": label_value(spec.flow_run_id),
        f"{LABEL_PREFIX}/step-run": label_value(spec.step_run_id),
        f"{LABEL_PREFIX}/attempt": label_value(spec.attempt_id),
    }
    annotations = {
        f"{LABEL_PREFIX}/step-key": spec.step_key,
        f"{LABEL_PREFIX}/step-name": spec.step_name,
        f"{LABEL_PREFIX}/attempt-id": spec.attempt_id,
        f"{LABEL_PREFIX}/attempt-number": str(spec.attempt_number),
    }
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
        "terminationGracePeriodSeconds": math.ceil(config.kill_grace_s),
    }
    if config.service_account:
        pod["serviceAccountName"] = config.service_account
    if config.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": s} for s in config.image_pull_secrets]
    if options.get("node_selector"):
        pod["nodeSelector"] = dict(options["node_selector"])
    if options.get("tolerations"):
        pod["tolerations"] = [dict(t) for t in options["tolerations"]]
    job_spec: dict[str, Any] = {
        "backoffLimit": 0,  # retries are Meridian's decision, one attempt = one pod
        "template": {"metadata": {"labels": labels, "annotations": annotations}, "spec": pod},
    }
    if spec.timeout_s and spec.timeout_s > 0:
        job_spec["activeDeadlineSeconds"] = max(1, math.ceil(spec.timeout_s))
    if config.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = config.ttl_seconds_after_finished
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(spec.attempt_id),
            "namespace": config.namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": job_spec,
    }
