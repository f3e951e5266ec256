"""``aws-sm:NAME[#key]``: AWS Secrets Manager ``GetSecretValue`` through boto3.

Settings come from the agent's ``secrets`` configuration (``AgentConfig.secrets["aws-sm"]``);
anything not set there falls back to boto3's own defaults, which already honour
``AWS_REGION``, ``AWS_PROFILE``, ``AWS_ENDPOINT_URL[_SECRETS_MANAGER]`` and the usual
credential chain (instance role, IRSA, SSO, ...).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.secrets._base import (
    check_text,
    config_keys,
    decode_text,
    extract_json_key,
    lazy_import,
    optional_str,
    positive_float,
    split_json_key,
)
from agent.secrets._errors import SecretNotFound, SecretUnavailable

SCHEME = "aws-sm"
# Error codes that mean "this reference names nothing usable": retrying cannot fix them.
_NOT_FOUND_CODES = frozenset({"ResourceNotFoundException", "InvalidRequestException"})


@dataclass(frozen=True)
class AwsSmConfig:
    """Options of the ``aws-sm`` resolver; None means boto3's default."""

    region: str | None = None
    endpoint_url: str | None = None
    profile: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    ca_bundle: str | None = None
    timeout_s: float = 10.0
    max_attempts: int = 3

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> AwsSmConfig:
        known = frozenset(cls.__dataclass_fields__)
        config = config_keys(SCHEME, raw, known)
        strings = {
            k: optional_str(config, k, SCHEME) for k in known - {"timeout_s", "max_attempts"}
        }
        return cls(
            **strings,
            timeout_s=positive_float(config, "timeout_s", SCHEME, 10.0),
            max_attempts=int(positive_float(config, "max_attempts", SCHEME, 3)),
        )


class AwsSecretsManagerResolver:
    """Resolves ``NAME`` (a secret name or ARN) with an optional ``#json-key``.

    boto3 clients are cached per region (they are thread-safe and refresh credentials
    themselves); secret values never are.
    """

    scheme = SCHEME

    def __init__(self, config: AwsSmConfig | None = None) -> None:
        self._config = config or AwsSmConfig()
        self._clients: dict[str | None, Any] = {}
        self._lock = threading.Lock()

    def resolve(self, what: str) -> str:
        name, key = split_json_key(what)
        if not name:
            raise SecretNotFound("the secret name is empty")
        botocore_exceptions = lazy_import("botocore.exceptions", SCHEME, "aws")
        try:
            response = self._client(_arn_region(name)).get_secret_value(SecretId=name)
        except botocore_exceptions.ClientError as exc:
            error = exc.response.get("Error", {})
            code, message = str(error.get("Code", "")), str(error.get("Message", ""))
            if code in _NOT_FOUND_CODES:
                raise SecretNotFound(f"Secrets Manager: {code}: {message}") from None
            raise SecretUnavailable(f"Secrets Manager: {code}: {message}") from None
        except botocore_exceptions.BotoCoreError as exc:
            # No region, no credentials, endpoint unreachable: the site's setup, not the step's.
            raise SecretUnavailable(f"Secrets Manager: {exc}") from None
        if response.get("SecretString") is not None:
            text = check_text(str(response["SecretString"]))
        elif response.get("SecretBinary") is not None:
            text = decode_text(bytes(response["SecretBinary"]))
        else:
            raise SecretNotFound("Secrets Manager returned neither a string nor a binary value")
        return extract_json_key(text, key) if key is not None else text

    def _client(self, arn_region: str | None) -> Any:
        # An ARN names its region; use it unless the configuration pins one.
        region = self._config.region or arn_region
        with self._lock:
            client = self._clients.get(region)
            if client is None:
                client = self._clients[region] = self._new_client(region)
        return client

    def _new_client(self, region: str | None) -> Any:
        boto3 = lazy_import("boto3", SCHEME, "aws")
        botocore_config = lazy_import("botocore.config", SCHEME, "aws")
        cfg = self._config
        kwargs: dict[str, Any] = {
            "endpoint_url": cfg.endpoint_url,
            "aws_access_key_id": cfg.access_key_id,
            "aws_secret_access_key": cfg.secret_access_key,
            "aws_session_token": cfg.session_token,
            "verify": cfg.ca_bundle,
        }
        timeouts = botocore_config.Config(
            connect_timeout=cfg.timeout_s,
            read_timeout=cfg.timeout_s,
            retries={"max_attempts": cfg.max_attempts, "mode": "standard"},
        )
        try:
            session = boto3.session.Session(profile_name=cfg.profile, region_name=region)
            return session.client(
                "secretsmanager",
                config=timeouts,
                **{k: v for k, v in kwargs.items() if v is not None},
            )
        except Exception as exc:  # NoRegionError, ProfileNotFound, ...: the site's setup
            raise SecretUnavailable(f"cannot create a Secrets Manager client: {exc}") from None


def _arn_region(name: str) -> str | None:
    parts = name.split(":")
    if len(parts) >= 7 and parts[0] == "arn" and parts[2] == "secretsmanager":
        return parts[3] or None
    return None
