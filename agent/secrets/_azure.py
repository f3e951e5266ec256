"""``azure-kv:VAULT/NAME[/VERSION][#key]``: Azure Key Vault "Get Secret" over REST.

``GET {vault_url}/secrets/{name}[/{version}]?api-version=7.4`` through an azure-core pipeline
whose ``BearerTokenCredentialPolicy`` asks an azure-identity credential for a token of scope
``https://vault.azure.net/.default``. The credential defaults to ``DefaultAzureCredential``
(managed identity, workload identity, environment, Azure CLI); ``vault_url`` (a template with
``{vault}``), ``credential`` and ``ca_bundle`` are injectable so tests can use a fake. azure-core
refuses to send a bearer token over plain HTTP, so even a fake vault must speak HTTPS.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from agent.secrets._base import (
    check_text,
    config_keys,
    extract_json_key,
    lazy_import,
    optional_str,
    positive_float,
    split_json_key,
)
from agent.secrets._errors import SecretConfigError, SecretNotFound, SecretUnavailable

SCHEME = "azure-kv"
DEFAULT_VAULT_URL = "https://{vault}.vault.azure.net"
SCOPE = "https://vault.azure.net/.default"
API_VERSION = "7.4"
# Key Vault's own naming rules; checking them here turns a typo into a clear permanent error
# instead of a request to some other host.
_VAULT = re.compile(r"^[A-Za-z][A-Za-z0-9-]{1,22}[A-Za-z0-9]$")
_NAME = re.compile(r"^[A-Za-z0-9-]{1,127}$")
_VERSION = re.compile(r"^[A-Za-z0-9]{1,64}$")


@dataclass(frozen=True)
class AzureKvConfig:
    """Options of the ``azure-kv`` resolver. ``credential`` is an azure-core TokenCredential."""

    vault_url: str = DEFAULT_VAULT_URL
    credential: Any = None
    ca_bundle: str | None = None
    timeout_s: float = 10.0

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> AzureKvConfig:
        config = config_keys(SCHEME, raw, frozenset(cls.__dataclass_fields__))
        vault_url = optional_str(config, "vault_url", SCHEME) or DEFAULT_VAULT_URL
        if "{vault}" not in vault_url:
            raise SecretConfigError(
                f"secrets config for {SCHEME!r}: vault_url must contain '{{vault}}'"
            )
        credential = config.get("credential")
        if credential is not None and not hasattr(credential, "get_token"):
            raise SecretConfigError(
                f"secrets config for {SCHEME!r}: credential must be an azure TokenCredential"
            )
        return cls(
            vault_url=vault_url,
            credential=credential,
            ca_bundle=optional_str(config, "ca_bundle", SCHEME),
            timeout_s=positive_float(config, "timeout_s", SCHEME, 10.0),
        )


class AzureKeyVaultResolver:
    """Resolves ``VAULT/NAME`` (latest version) or ``VAULT/NAME/VERSION``."""

    scheme = SCHEME

    def __init__(self, config: AzureKvConfig | None = None) -> None:
        self._config = config or AzureKvConfig()
        self._credential: Any = self._config.credential
        self._lock = threading.Lock()

    def resolve(self, what: str) -> str:
        reference, key = split_json_key(what)
        vault, name, version = _parse(reference)
        path = f"/secrets/{quote(name)}" + (f"/{quote(version)}" if version else "")
        body = self._get(self._config.vault_url.format(vault=vault).rstrip("/") + path)
        value = body.get("value") if isinstance(body, dict) else None
        if not isinstance(value, str):
            raise SecretUnavailable("Key Vault answered without a secret value")
        text = check_text(value)
        return extract_json_key(text, key) if key is not None else text

    def _get(self, url: str) -> Any:
        core = lazy_import("azure.core", SCHEME, "azure")
        errors = lazy_import("azure.core.exceptions", SCHEME, "azure")
        policies = lazy_import("azure.core.pipeline.policies", SCHEME, "azure")
        transports = lazy_import("azure.core.pipeline.transport", SCHEME, "azure")
        rest = lazy_import("azure.core.rest", SCHEME, "azure")
        cfg = self._config
        try:
            transport = transports.RequestsTransport(
                connection_verify=cfg.ca_bundle or True,
                connection_timeout=cfg.timeout_s,
                read_timeout=cfg.timeout_s,
            )
            pipeline_policies = [
                policies.RetryPolicy(retry_total=2),
                policies.BearerTokenCredentialPolicy(self._credential_or_default(), SCOPE),
            ]
            client = core.PipelineClient(url, policies=pipeline_policies, transport=transport)
            with client:
                request = rest.HttpRequest("GET", url, params={"api-version": API_VERSION})
                response = client.send_request(request)
                response.read()
        except errors.ClientAuthenticationError as exc:
            raise SecretUnavailable(f"Azure credential: {exc.message}") from None
        except errors.AzureError as exc:
            raise SecretUnavailable(f"Key Vault unreachable: {exc.message}") from None
        return _checked(response)

    def _credential_or_default(self) -> Any:
        with self._lock:
            if self._credential is None:
                identity = lazy_import("azure.identity", SCHEME, "azure")
                # Built on first use, not at agent start: a site without Azure secrets must not
                # need Azure credentials.
                self._credential = identity.DefaultAzureCredential()
            return self._credential


def _parse(reference: str) -> tuple[str, str, str | None]:
    parts = reference.split("/")
    if len(parts) not in (2, 3):
        raise SecretNotFound("an azure-kv reference must look like VAULT/NAME[/VERSION]")
    vault, name = parts[0], parts[1]
    version = parts[2] if len(parts) == 3 else None
    if not _VAULT.match(vault):
        raise SecretNotFound(f"{vault!r} is not a valid Key Vault name")
    if not _NAME.match(name):
        raise SecretNotFound(f"{name!r} is not a valid Key Vault secret name")
    if version is not None and not _VERSION.match(version):
        raise SecretNotFound(f"{version!r} is not a valid Key Vault secret version")
    return vault, name, version


def _checked(response: Any) -> Any:
    status = int(response.status_code)
    if status == 200:
        try:
            return response.json()
        except ValueError:
            raise SecretUnavailable("Key Vault answered with something that is not JSON") from None
    code, message = _error(response)
    reason = f"Key Vault: HTTP {status}: {code}: {message}"
    # SecretDisabled comes as 403 but, like a missing secret, needs a person to fix it.
    if status == 404 or code == "SecretDisabled":
        raise SecretNotFound(reason)
    raise SecretUnavailable(reason)


def _error(response: Any) -> tuple[str, str]:
    """Key Vault's error code and message from a non-200 answer (those never carry values)."""
    try:
        error = response.json()["error"]
        return str(error.get("code", "")), str(error.get("message", ""))[:300]
    except (ValueError, KeyError, TypeError, AttributeError):
        return "", str(getattr(response, "reason", "") or "")[:300]
