"""Secrets stay at the site: the agent resolves a step's secret references locally.

A step names ``{ENV_NAME: "scheme:what"}`` (``meridian.core.secrets`` validates the syntax). Only
the references travel through the control plane; the runner asks the ``SecretStore`` for the
values just before the provider starts the step, puts them in the step's environment and
scrubs them (``Redactor``) from every log line and error it reports. See docs/secrets.md.
"""

from __future__ import annotations

from agent.secrets._aws import AwsSecretsManagerResolver, AwsSmConfig
from agent.secrets._azure import AzureKeyVaultResolver, AzureKvConfig
from agent.secrets._base import SecretResolver
from agent.secrets._errors import (
    SecretConfigError,
    SecretError,
    SecretNotFound,
    SecretUnavailable,
)
from agent.secrets._gcp import GcpSecretManagerResolver, GcpSmConfig
from agent.secrets._local import EnvResolver, FileResolver
from agent.secrets._store import ResolvedSecrets, SecretEnv, SecretStore
from agent.secrets.redact import Redactor, redact_report

__all__ = [
    "AwsSecretsManagerResolver",
    "AwsSmConfig",
    "AzureKeyVaultResolver",
    "AzureKvConfig",
    "EnvResolver",
    "FileResolver",
    "GcpSecretManagerResolver",
    "GcpSmConfig",
    "Redactor",
    "ResolvedSecrets",
    "SecretConfigError",
    "SecretEnv",
    "SecretError",
    "SecretNotFound",
    "SecretResolver",
    "SecretStore",
    "SecretUnavailable",
    "redact_report",
]
