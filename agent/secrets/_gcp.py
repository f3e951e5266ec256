"""``gcp-sm:projects/P/secrets/S[/versions/V][#key]``: Google Secret Manager over REST.

Calls ``GET {base_url}/v1/{name}:access`` through google-auth's ``AuthorizedSession``, which
adds and refreshes the OAuth token. Credentials default to Application Default Credentials
(service account key, workload identity, metadata server); ``base_url``, ``credentials`` and
``ca_bundle`` are injectable so tests can point the resolver at a fake.
"""

from __future__ import annotations

import base64
import binascii
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.secrets._base import (
    config_keys,
    decode_text,
    extract_json_key,
    lazy_import,
    optional_str,
    positive_float,
    split_json_key,
)
from agent.secrets._errors import SecretConfigError, SecretNotFound, SecretUnavailable

SCHEME = "gcp-sm"
DEFAULT_BASE_URL = "https://secretmanager.googleapis.com"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
_NAME = re.compile(r"^projects/[^/#?]+/secrets/[^/#?]+(/versions/[^/#?]+)?$")
# 400 FAILED_PRECONDITION is how Secret Manager answers for a disabled or destroyed version.
_NOT_FOUND_STATUS = frozenset({400, 404})


@dataclass(frozen=True)
class GcpSmConfig:
    """Options of the ``gcp-sm`` resolver. ``credentials`` is a google-auth Credentials."""

    base_url: str = DEFAULT_BASE_URL
    credentials: Any = None
    ca_bundle: str | None = None
    timeout_s: float = 10.0

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> GcpSmConfig:
        config = config_keys(SCHEME, raw, frozenset(cls.__dataclass_fields__))
        credentials = config.get("credentials")
        if credentials is not None and not hasattr(credentials, "before_request"):
            raise SecretConfigError(
                f"secrets config for {SCHEME!r}: credentials must be google-auth Credentials"
            )
        return cls(
            base_url=optional_str(config, "base_url", SCHEME) or DEFAULT_BASE_URL,
            credentials=credentials,
            ca_bundle=optional_str(config, "ca_bundle", SCHEME),
            timeout_s=positive_float(config, "timeout_s", SCHEME, 10.0),
        )


class GcpSecretManagerResolver:
    """Resolves a secret version's resource name; a name without a version means ``latest``."""

    scheme = SCHEME

    def __init__(self, config: GcpSmConfig | None = None) -> None:
        self._config = config or GcpSmConfig()
        self._credentials: Any = self._config.credentials
        self._lock = threading.Lock()

    def resolve(self, what: str) -> str:
        name, key = split_json_key(what)
        if not _NAME.match(name):
            raise SecretNotFound(
                "a gcp-sm reference must look like projects/P/secrets/S/versions/V"
            )
        if "/versions/" not in name:
            name += "/versions/latest"
        payload = self._access(name)
        try:
            data = base64.b64decode(str(payload["payload"]["data"]), validate=True)
        except (KeyError, TypeError, binascii.Error):
            raise SecretUnavailable("Secret Manager answered without a valid payload") from None
        text = decode_text(data)
        return extract_json_key(text, key) if key is not None else text

    def _access(self, name: str) -> Any:
        transport = lazy_import("google.auth.transport.requests", SCHEME, "gcp")
        auth_exceptions = lazy_import("google.auth.exceptions", SCHEME, "gcp")
        requests = lazy_import("requests", SCHEME, "gcp")
        url = f"{self._config.base_url.rstrip('/')}/v1/{name}:access"
        try:
            # A session per call: requests sessions are not meant to be shared across threads,
            # while the credentials (and their cached token) are.
            with transport.AuthorizedSession(self._credentials_or_default()) as session:
                if self._config.ca_bundle:
                    session.verify = self._config.ca_bundle
                response = session.get(url, timeout=self._config.timeout_s)
        except auth_exceptions.GoogleAuthError as exc:
            raise SecretUnavailable(f"Google credentials: {exc}") from None
        except requests.RequestException as exc:
            raise SecretUnavailable(f"Secret Manager unreachable: {exc}") from None
        if response.status_code != 200:
            reason = f"Secret Manager: HTTP {response.status_code}: {_error_message(response)}"
            if response.status_code in _NOT_FOUND_STATUS:
                raise SecretNotFound(reason)
            raise SecretUnavailable(reason)
        try:
            return response.json()
        except ValueError:
            raise SecretUnavailable("Secret Manager answered with something not JSON") from None

    def _credentials_or_default(self) -> Any:
        with self._lock:
            if self._credentials is None:
                google_auth = lazy_import("google.auth", SCHEME, "gcp")
                # Looked up on first use, not at agent start: a site without GCP secrets must
                # not need Google credentials.
                self._credentials, _ = google_auth.default(scopes=[CLOUD_PLATFORM_SCOPE])
            return self._credentials


def _error_message(response: Any) -> str:
    """Google's error message from a non-200 answer (those never carry the secret)."""
    try:
        return str(response.json()["error"]["message"])[:300]
    except (ValueError, KeyError, TypeError):
        return str(response.reason or "")[:300]
