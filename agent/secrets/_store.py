"""Resolving one attempt's ``{ENV_NAME: reference}`` map at the site, just before it starts.

The store holds one resolver per scheme. Each attempt resolves its references afresh (values
are never cached, so rotation is picked up by the next attempt), each distinct reference once,
in worker threads because the cloud SDKs block. The result is the environment to hand to the
provider and the ``Redactor`` for everything the attempt reports.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.secrets._aws import AwsSecretsManagerResolver, AwsSmConfig
from agent.secrets._azure import AzureKeyVaultResolver, AzureKvConfig
from agent.secrets._base import SecretResolver, config_keys
from agent.secrets._errors import SecretConfigError, SecretError, SecretNotFound, SecretUnavailable
from agent.secrets._gcp import GcpSecretManagerResolver, GcpSmConfig
from agent.secrets._local import DEFAULT_MAX_FILE_BYTES, EnvResolver, FileResolver
from agent.secrets.redact import MIN_REDACT_CHARS, Redactor

log = logging.getLogger("meridian.agent.secrets")


class SecretEnv(dict[str, str]):
    """The resolved environment: a plain dict whose repr hides the values.

    ``ExecutionSpec`` is a dataclass, so any ``repr(spec)`` in a log or error message would
    otherwise print every secret.
    """

    def __repr__(self) -> str:
        return "SecretEnv({" + ", ".join(f"{k!r}: '***'" for k in self) + "})"

    __str__ = __repr__


@dataclass(frozen=True)
class ResolvedSecrets:
    """One attempt's secrets: the env for the provider and the redactor for its reports."""

    env: SecretEnv = field(default_factory=SecretEnv)
    redactor: Redactor = field(default_factory=Redactor)


class SecretStore:
    """Resolves secret references with one ``SecretResolver`` per scheme."""

    def __init__(self, resolvers: Iterable[SecretResolver] | None = None) -> None:
        chosen = default_resolvers() if resolvers is None else list(resolvers)
        self._resolvers: dict[str, SecretResolver] = {r.scheme: r for r in chosen}

    @classmethod
    def from_config(cls, config: Mapping[str, Mapping[str, Any]] | None) -> SecretStore:
        """Build from ``AgentConfig.secrets``: ``{scheme: {option: value}}``."""
        config = config_keys("secrets", config or {}, frozenset(("file", *_CLOUD)))
        file_cfg = config_keys("file", config.get("file", {}), frozenset({"max_bytes"}))
        max_bytes = file_cfg.get("max_bytes", DEFAULT_MAX_FILE_BYTES)
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
            raise SecretConfigError("secrets config for 'file': max_bytes must be a positive int")
        return cls(
            [
                EnvResolver(),
                FileResolver(max_bytes),
                AwsSecretsManagerResolver(AwsSmConfig.from_mapping(config.get("aws-sm", {}))),
                GcpSecretManagerResolver(GcpSmConfig.from_mapping(config.get("gcp-sm", {}))),
                AzureKeyVaultResolver(AzureKvConfig.from_mapping(config.get("azure-kv", {}))),
            ]
        )

    async def resolve(self, secrets: Mapping[str, str]) -> ResolvedSecrets:
        """Resolve every reference; raises the most severe ``SecretError`` (permanent first)."""
        if not secrets:
            return ResolvedSecrets()
        references = sorted(set(secrets.values()))
        results = await asyncio.gather(
            *(asyncio.to_thread(self._resolve_one, ref) for ref in references),
            return_exceptions=True,
        )
        by_reference = dict(zip(references, results, strict=True))
        _raise_first_failure(secrets, by_reference)
        env = SecretEnv({name: str(by_reference[ref]) for name, ref in secrets.items()})
        for name, value in env.items():
            if value and len(value) < MIN_REDACT_CHARS:
                # The name only: the point is that this value cannot be scrubbed from logs.
                log.warning(
                    "secret %s is shorter than %d characters and is not redacted from logs",
                    name,
                    MIN_REDACT_CHARS,
                )
        return ResolvedSecrets(env, Redactor.for_values(env.values()))

    def _resolve_one(self, reference: str) -> str:
        scheme, _, what = reference.partition(":")
        resolver = self._resolvers.get(scheme)
        if resolver is None:
            known = ", ".join(sorted(self._resolvers)) or "none"
            raise SecretNotFound(f"this agent cannot resolve {scheme!r} secrets (known: {known})")
        try:
            return resolver.resolve(what)
        except SecretError:
            raise
        except Exception as exc:
            # A resolver bug or an SDK error we did not map: report its type only, since its
            # message is not ours to vouch for.
            raise SecretUnavailable(
                f"{scheme} resolver failed with {type(exc).__module__}.{type(exc).__qualname__}"
            ) from None


_CLOUD = ("aws-sm", "gcp-sm", "azure-kv")


def default_resolvers() -> list[SecretResolver]:
    """Every built-in resolver with default settings (SDKs are imported only when used)."""
    return [
        EnvResolver(),
        FileResolver(),
        AwsSecretsManagerResolver(),
        GcpSecretManagerResolver(),
        AzureKeyVaultResolver(),
    ]


def _raise_first_failure(secrets: Mapping[str, str], results: Mapping[str, object]) -> None:
    failures: list[tuple[str, str, SecretError]] = []
    for name in sorted(secrets):
        outcome = results[secrets[name]]
        if isinstance(outcome, SecretError):
            failures.append((name, secrets[name], outcome))
        elif isinstance(outcome, BaseException):
            raise outcome  # not from a resolver (e.g. cancellation): let it propagate
    if not failures:
        return
    # A permanent failure wins: retrying the attempt elsewhere cannot fix it.
    failures.sort(key=lambda f: f[2].error_class != "permanent")
    name, reference, error = failures[0]
    raise type(error)(f"secret {name} ({reference}): {error}") from None
