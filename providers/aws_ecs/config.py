"""The typed config of the ``aws-ecs`` provider and the checks of its per-step options."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal, cast

from providers.base import ProviderError, ProviderOptionsError

LaunchType = Literal["FARGATE", "EC2"]


def _opt_str(raw: Mapping[str, Any], key: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ProviderError(f"aws-ecs config {key!r} must be a non-empty string, not {value!r}")
    return value


def _str_list(raw: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = raw.get(key, ())
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise ProviderError(f"aws-ecs config {key!r} must be a list of strings, not {value!r}")
    return tuple(value)


def _number(raw: Mapping[str, Any], key: str, default: float) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ProviderError(f"aws-ecs config {key!r} must be a number >= 0, not {value!r}")
    return float(value)


@dataclass(frozen=True)
class EcsConfig:
    """Provider config (the agent's ``providers.<name>.config`` mapping), typed.

    Unset credentials use boto3's default chain (environment, profile, web identity, ECS task
    role, EC2 instance profile); ``endpoint_url``/``logs_endpoint_url`` and ``verify`` (a CA
    bundle path, or False) point the clients elsewhere, e.g. at an emulator or a VPC endpoint.
    """

    cluster: str
    task_definition: str
    region: str | None = None
    container_name: str | None = None
    launch_type: LaunchType = "FARGATE"
    platform_version: str | None = None
    subnets: tuple[str, ...] = ()
    security_groups: tuple[str, ...] = ()
    assign_public_ip: bool = False
    log_group: str | None = None
    log_stream_prefix: str | None = None
    code_dir: str = "/app"
    endpoint_url: str | None = None
    logs_endpoint_url: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    profile: str | None = None
    verify: bool | str = True
    poll_interval_s: float = 5.0
    kill_grace_s: float = 60.0
    log_settle_s: float = 15.0

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> EcsConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ProviderError(
                f"aws-ecs provider does not accept config key(s) {', '.join(unknown)}; "
                f"known keys: {', '.join(sorted(known))}"
            )
        cluster = _opt_str(raw, "cluster")
        task_definition = _opt_str(raw, "task_definition")
        if cluster is None or task_definition is None:
            raise ProviderError("aws-ecs config needs 'cluster' and 'task_definition'")
        launch_type = raw.get("launch_type", "FARGATE")
        if launch_type not in ("FARGATE", "EC2"):
            raise ProviderError(
                f"aws-ecs config 'launch_type' must be FARGATE or EC2: {launch_type!r}"
            )
        subnets = _str_list(raw, "subnets")
        if launch_type == "FARGATE" and not subnets:
            raise ProviderError("aws-ecs config: FARGATE (awsvpc networking) needs 'subnets'")
        verify = raw.get("verify", True)
        if not isinstance(verify, bool | str):
            raise ProviderError("aws-ecs config 'verify' must be a boolean or a CA bundle path")
        public_ip = raw.get("assign_public_ip", False)
        if not isinstance(public_ip, bool):
            raise ProviderError("aws-ecs config 'assign_public_ip' must be a boolean")
        access_key, secret = _opt_str(raw, "access_key_id"), _opt_str(raw, "secret_access_key")
        if (access_key is None) != (secret is None):
            raise ProviderError("aws-ecs config: set both access_key_id and secret_access_key")
        return cls(
            cluster=cluster,
            task_definition=task_definition,
            region=_opt_str(raw, "region"),
            container_name=_opt_str(raw, "container_name"),
            launch_type=cast(LaunchType, launch_type),
            platform_version=_opt_str(raw, "platform_version"),
            subnets=subnets,
            security_groups=_str_list(raw, "security_groups"),
            assign_public_ip=public_ip,
            log_group=_opt_str(raw, "log_group"),
            log_stream_prefix=_opt_str(raw, "log_stream_prefix"),
            code_dir=_opt_str(raw, "code_dir") or "/app",
            endpoint_url=_opt_str(raw, "endpoint_url"),
            logs_endpoint_url=_opt_str(raw, "logs_endpoint_url"),
            access_key_id=access_key,
            secret_access_key=secret,
            session_token=_opt_str(raw, "session_token"),
            profile=_opt_str(raw, "profile"),
            verify=verify,
            poll_interval_s=_number(raw, "poll_interval_s", 5.0),
            kill_grace_s=_number(raw, "kill_grace_s", 60.0),
            log_settle_s=_number(raw, "log_settle_s", 15.0),
        )


def _positive_int(options: Mapping[str, Any], key: str) -> None:
    value = options.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ProviderOptionsError(f"option {key!r} must be a positive integer, not {value!r}")


def validate_ecs_options(options: Mapping[str, Any], config: EcsConfig) -> None:
    """Check the values of known per-step options (unknown keys are checked by the base)."""
    command = options.get("command")
    if command is not None and (
        not isinstance(command, list)
        or not command
        or not all(isinstance(part, str) for part in command)
    ):
        raise ProviderOptionsError(
            f"option 'command' must be a non-empty list of strings: {command!r}"
        )
    env = options.get("env", {})
    if not isinstance(env, Mapping):
        raise ProviderOptionsError(f"option 'env' must be an object of strings, not {env!r}")
    for key, value in env.items():
        if not isinstance(key, str) or not key or "=" in key or key.startswith("MERIDIAN_"):
            raise ProviderOptionsError(f"option 'env': {key!r} is not a usable variable name")
        if not isinstance(value, str):
            raise ProviderOptionsError(f"option 'env': the value of {key!r} must be a string")
    for key in ("cpu", "memory", "gpu"):
        _positive_int(options, key)
    if options.get("gpu") is not None and config.launch_type == "FARGATE":
        raise ProviderOptionsError("option 'gpu' needs launch_type EC2: Fargate has no GPUs")
    for key in ("code_dir", "task_definition"):
        value = options.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise ProviderOptionsError(f"option {key!r} must be a non-empty string: {value!r}")
    code_dir = options.get("code_dir")
    if isinstance(code_dir, str) and not code_dir.startswith("/"):
        raise ProviderOptionsError(
            f"option 'code_dir' must be an absolute path in the image: {code_dir!r}"
        )
