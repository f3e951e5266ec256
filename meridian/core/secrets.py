"""Secret references: what a step may name, checked the same way by the SDK and the server.

A step says which environment variables it needs and where the agent finds each value
(``secrets={"DB_PASSWORD": "aws-sm:prod/db"}``). Only references travel through the control
plane; agents resolve them at the site (``agent/secrets``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from meridian.core.errors import ValidationError

SCHEMES = ("env", "file", "aws-sm", "gcp-sm", "azure-kv")
MAX_SECRETS = 64
MAX_REFERENCE = 512
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
RESERVED_PREFIX = "MERIDIAN_"


def check_secret_references(secrets: Mapping[str, str], where: str) -> dict[str, str]:
    """Validate ``{ENV_NAME: "scheme:reference"}``; returns a plain dict."""
    if not isinstance(secrets, Mapping):
        raise ValidationError(f"{where}: secrets must be a mapping of env var name to reference")
    if len(secrets) > MAX_SECRETS:
        raise ValidationError(f"{where}: at most {MAX_SECRETS} secrets per step")
    checked: dict[str, str] = {}
    for name, reference in secrets.items():
        if not isinstance(name, str) or not ENV_NAME.match(name):
            raise ValidationError(f"{where}: secret name {name!r} is not an environment variable")
        if name.upper().startswith(RESERVED_PREFIX):
            raise ValidationError(f"{where}: secret name {name!r}: {RESERVED_PREFIX}* is reserved")
        if not isinstance(reference, str) or len(reference) > MAX_REFERENCE:
            raise ValidationError(f"{where}: secret {name}: reference must be a short string")
        scheme, sep, rest = reference.partition(":")
        if not sep or scheme not in SCHEMES or not rest.strip():
            raise ValidationError(
                f"{where}: secret {name}: reference {reference!r} must look like "
                f"SCHEME:WHAT with SCHEME one of {', '.join(SCHEMES)} (e.g. 'env:DB_PASSWORD')"
            )
        checked[name] = reference
    return checked
