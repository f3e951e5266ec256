"""Configuration, per-step options and the container group model of the ``azure-aci`` provider.

``AciConfig`` is the typed, validated form of the provider's config mapping; ``OPTIONS_SCHEMA``
and ``check_options`` describe and validate per-step options; ``group_name`` turns an attempt
id into a container group name that satisfies ARM's naming rules; ``build_group`` is the
container group an attempt runs as. Nothing here imports Azure. Kept apart from the provider
so ``import providers.azure_aci`` stays cheap and testable without the ``[azure]`` extra.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from providers.base import ExecutionSpec, ProviderError, ProviderOptionsError

DEFAULT_BASE_URL = "https://management.azure.com"
DEFAULT_CODE_DIR = "/app"
CONTAINER_NAME = "step"
GPU_SKUS = ("K80", "P100", "V100")
_NAME_PREFIX = "meridian-"
_NAME_MAX = 63

OPTIONS_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "properties": {
        "image": {"type": "string", "minLength": 1},
        "command": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "cpu": {"type": "number", "exclusiveMinimum": 0},
        "memory_gb": {"type": "number", "exclusiveMinimum": 0},
        "gpu": {"type": "integer", "minimum": 1},
        "gpu_sku": {"type": "string", "enum": list(GPU_SKUS)},
        "env": {"type": "object", "additionalProperties": {"type": "string"}},
        "secure_env": {"type": "object", "additionalProperties": {"type": "string"}},
        "code_dir": {"type": "string", "minLength": 1},
    },
    "additionalProperties": False,
}

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _positive(value: Any, what: str, error: type[ProviderError]) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise error(f"{what} must be a number, not {value!r}")
    if value <= 0:
        raise error(f"{what} must be greater than 0, not {value!r}")
    return float(value)


def string_map(value: Any, what: str, error: type[ProviderError]) -> dict[str, str]:
    """An environment mapping, checked: valid variable names, string values."""
    if not isinstance(value, Mapping):
        raise error(f"{what} must be an object of strings, not {type(value).__name__}")
    for key, item in value.items():
        if not isinstance(key, str) or not _ENV_NAME.match(key):
            raise error(f"{what}: {key!r} is not a valid environment variable name")
        if not isinstance(item, str):
            raise error(f"{what}: the value of {key!r} must be a string, not {item!r}")
    return dict(value)


def check_options(options: Mapping[str, Any]) -> None:
    """Check option values (unknown keys are rejected by ``Provider.validate_options``)."""
    err = ProviderOptionsError
    for key in ("image", "code_dir"):
        if key in options and (not isinstance(options[key], str) or not options[key].strip()):
            raise err(f"option {key!r} must be a non-empty string, not {options[key]!r}")
    if "code_dir" in options and not str(options["code_dir"]).startswith("/"):
        raise err(
            f"option 'code_dir' must be an absolute path in the image: {options['code_dir']!r}"
        )
    command = options.get("command")
    if command is not None and (
        not isinstance(command, list) or not command or not all(isinstance(c, str) for c in command)
    ):
        raise err(f"option 'command' must be a non-empty list of strings, not {command!r}")
    for key in ("cpu", "memory_gb"):
        if key in options:
            _positive(options[key], f"option {key!r}", err)
    gpu = options.get("gpu")
    if gpu is not None and (isinstance(gpu, bool) or not isinstance(gpu, int) or gpu < 1):
        raise err(f"option 'gpu' must be an integer >= 1 (GPU count), not {gpu!r}")
    if "gpu_sku" in options and options["gpu_sku"] not in GPU_SKUS:
        raise err(
            f"option 'gpu_sku' must be one of {', '.join(GPU_SKUS)}, not {options['gpu_sku']!r}"
        )
    for key in ("env", "secure_env"):
        string_map(options.get(key, {}), f"option {key!r}", err)


def group_name(attempt_id: str) -> str:
    """The container group name for an attempt: deterministic, lowercase, at most 63 chars.

    ARM allows lowercase letters, digits and single hyphens, not at either end. Ids that do not
    fit are shortened with a hash suffix so two attempts never share a name.
    """
    slug = re.sub(r"-+", "-", re.sub(r"[^a-z0-9]", "-", attempt_id.lower())).strip("-")
    name = _NAME_PREFIX + slug
    if slug and len(name) <= _NAME_MAX and slug == attempt_id:
        return name
    digest = hashlib.sha256(attempt_id.encode("utf-8")).hexdigest()[:12]
    head = slug[: _NAME_MAX - len(_NAME_PREFIX) - len(digest) - 1].strip("-")
    return f"{_NAME_PREFIX}{head}-{digest}" if head else f"{_NAME_PREFIX}{digest}"


@dataclass(frozen=True)
class RegistryCredential:
    """Username/password credentials for a private image registry (e.g. an ACR admin user)."""

    server: str
    username: str
    password: str


@dataclass(frozen=True)
class AciConfig:
    """The provider's settings. Only subscription, resource group, location and image are required.

    Credentials: an injected async ``credential`` (any ``azure.core`` AsyncTokenCredential), or
    ``tenant_id``/``client_id``/``client_secret`` for a service principal, or, by default,
    ``DefaultAzureCredential`` (managed identity inside Azure, environment/CLI elsewhere).
    ``base_url``, ``authority`` and ``connection_verify`` point everything at another cloud or at
    a test fake.
    """

    subscription_id: str
    resource_group: str
    location: str
    image: str
    cpu: float = 1.0
    memory_gb: float = 1.5
    os_type: str = "Linux"
    registry_credentials: tuple[RegistryCredential, ...] = ()
    subnet_ids: tuple[str, ...] = ()
    poll_interval_s: float = 5.0
    kill_grace_s: float = 30.0
    delete_after_completion: bool = True
    base_url: str = DEFAULT_BASE_URL
    credential: Any = None
    tenant_id: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    authority: str | None = None
    connection_verify: bool | str = True

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> AciConfig:
        """Validate the provider's config mapping; ProviderError names the offending key."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ProviderError(
                f"azure-aci provider does not accept config key(s) {', '.join(unknown)}; "
                f"known keys: {', '.join(sorted(known))}"
            )
        for key in ("subscription_id", "resource_group", "location", "image"):
            if not isinstance(raw.get(key), str) or not raw[key].strip():
                raise ProviderError(f"azure-aci provider: config {key!r} is required (a string)")
        sp = [raw.get(k) for k in ("tenant_id", "client_id", "client_secret")]
        if any(sp) and not all(isinstance(v, str) and v for v in sp):
            raise ProviderError(
                "azure-aci provider: tenant_id, client_id and client_secret go together"
            )
        if raw.get("os_type", "Linux") not in ("Linux", "Windows"):
            raise ProviderError("azure-aci provider: os_type must be 'Linux' or 'Windows'")
        verify = raw.get("connection_verify", True)
        if not isinstance(verify, bool | str):
            raise ProviderError("azure-aci provider: connection_verify must be a bool or a path")
        return cls(
            subscription_id=raw["subscription_id"],
            resource_group=raw["resource_group"],
            location=raw["location"],
            image=raw["image"],
            cpu=_positive(raw.get("cpu", 1.0), "config 'cpu'", ProviderError),
            memory_gb=_positive(raw.get("memory_gb", 1.5), "config 'memory_gb'", ProviderError),
            os_type=raw.get("os_type", "Linux"),
            registry_credentials=_registries(raw.get("registry_credentials", ())),
            subnet_ids=_strings(raw.get("subnet_ids", ()), "subnet_ids"),
            poll_interval_s=_positive(
                raw.get("poll_interval_s", 5.0), "config 'poll_interval_s'", ProviderError
            ),
            kill_grace_s=_positive(
                raw.get("kill_grace_s", 30.0), "config 'kill_grace_s'", ProviderError
            ),
            delete_after_completion=bool(raw.get("delete_after_completion", True)),
            base_url=str(raw.get("base_url") or DEFAULT_BASE_URL).rstrip("/"),
            credential=raw.get("credential"),
            tenant_id=raw.get("tenant_id"),
            client_id=raw.get("client_id"),
            client_secret=raw.get("client_secret"),
            authority=raw.get("authority"),
            connection_verify=verify,
        )


def _strings(value: Any, key: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ProviderError(f"azure-aci provider: config {key!r} must be a list of strings")
    if not all(isinstance(v, str) and v for v in value):
        raise ProviderError(f"azure-aci provider: config {key!r} must be a list of strings")
    return tuple(value)


def _registries(value: Any) -> tuple[RegistryCredential, ...]:
    if isinstance(value, str | Mapping) or not isinstance(value, Sequence):
        raise ProviderError("azure-aci provider: registry_credentials must be a list of objects")
    creds = []
    for item in value:
        if not isinstance(item, Mapping) or not all(
            isinstance(item.get(k), str) and item.get(k) for k in ("server", "username", "password")
        ):
            raise ProviderError(
                "azure-aci provider: each registry_credentials entry needs string "
                "'server', 'username' and 'password'"
            )
        creds.append(RegistryCredential(item["server"], item["username"], item["password"]))
    return tuple(creds)


def build_group(spec: ExecutionSpec, cfg: AciConfig, models: Any) -> Any:
    """The container group for one attempt (restart policy Never: one run, then stop).

    ``models`` is ``azure.mgmt.containerinstance.models``, passed in so this module needs no SDK.
    """
    opts = spec.options
    env: dict[str, tuple[str, bool]] = {}  # name -> (value, secure)
    env.update({k: (v, False) for k, v in opts.get("env", {}).items()})
    # Step inputs, the agent's env and declared secrets go as secureValue: ARM never
    # returns them in a GET and the portal does not show them.
    env.update({k: (v, True) for k, v in opts.get("secure_env", {}).items()})
    env.update({k: (v, True) for k, v in spec.env.items()})
    env["MERIDIAN_ATTEMPT_ID"] = (spec.attempt_id, False)
    env["MERIDIAN_FLOW_RUN_ID"] = (spec.flow_run_id, False)
    env["MERIDIAN_STEP_KEY"] = (spec.step_key, False)
    command = opts.get("command")
    if command is None:
        command = ["meridian-step", "--spec-env", "MERIDIAN_STEP_SPEC"]
        step_spec = {
            "module": spec.module,
            "function": spec.function,
            "inputs_json": spec.inputs_json,
            "bundle_dir": opts.get("code_dir", DEFAULT_CODE_DIR),
            "step_key": spec.step_key,
            **spec.context_fields(),
            **spec.result_fields(),
        }
        env["MERIDIAN_STEP_SPEC"] = (json.dumps(step_spec), True)
    gpu = opts.get("gpu")
    requests = models.ResourceRequests(
        cpu=float(opts.get("cpu", cfg.cpu)),
        memory_in_gb=float(opts.get("memory_gb", cfg.memory_gb)),
        gpu=models.GpuResource(count=gpu, sku=opts.get("gpu_sku", "V100")) if gpu else None,
    )
    container = models.Container(
        name=CONTAINER_NAME,
        image=opts.get("image", cfg.image),
        command=list(command),
        resources=models.ResourceRequirements(requests=requests),
        environment_variables=[
            models.EnvironmentVariable(name=k, secure_value=v)
            if secure
            else models.EnvironmentVariable(name=k, value=v)
            for k, (v, secure) in env.items()
        ],
    )
    registries = [
        models.ImageRegistryCredential(server=r.server, username=r.username, password=r.password)
        for r in cfg.registry_credentials
    ]
    tags = {
        "managed-by": "meridian",
        "meridian-flow-run-id": spec.flow_run_id,
        "meridian-step-run-id": spec.step_run_id,
        "meridian-attempt-id": spec.attempt_id,
        "meridian-step-key": spec.step_key[:256],  # ARM caps tag values at 256 chars
    }
    return models.ContainerGroup(
        location=cfg.location,
        containers=[container],
        os_type=cfg.os_type,
        restart_policy="Never",
        image_registry_credentials=registries or None,
        subnet_ids=[models.ContainerGroupSubnetId(id=s) for s in cfg.subnet_ids] or None,
        tags=tags,
    )
