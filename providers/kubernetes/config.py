"""The Kubernetes provider's typed config and its per-step options.

Pure values and checks, no SDK import: testable without a cluster and without the
``kubernetes`` extra.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from providers.base import ProviderError, ProviderOptionsError

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
