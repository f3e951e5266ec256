"""The Kubernetes provider's Job manifest: names, labels and the batch/v1 Job of one attempt.

Pure functions, no SDK import: ``providers.kubernetes.provider`` turns the manifest dict into the
client's ``V1Job`` model and talks to the API server.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from typing import Any

from providers.base import ExecutionSpec, ProviderError, ProviderOptionsError
from providers.kubernetes.config import KubernetesConfig

CONTAINER = "step"
SPEC_ENV = "MERIDIAN_STEP_SPEC"
STEP_COMMAND = ("meridian-step", "--spec-env", SPEC_ENV)
LABEL_PREFIX = "meridian.io"
# Linux refuses to exec with a single environment string over MAX_ARG_STRLEN (128 KiB).
MAX_SPEC_ENV_BYTES = 128 * 1024 - 1024


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
            **spec.context_fields(),
            **spec.result_fields(),
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
