"""The agent's config file: one section per provider (endpoints, clusters, credentials refs).

TOML (or JSON, by extension)::

    [providers.aws-ecs]
    region = "eu-west-1"
    cluster = "analytics"
    task_definition = "meridian-step"

    [providers.slurm]
    partition = "batch"

    [secrets.aws-sm]
    region = "eu-west-1"

    [sealing.keys]
    eu-sites = "file:/etc/meridian/eu-sites.key"

    [limits]
    max_result_bytes = 3145728
    log_head_bytes = 4194304

    [result_stores.scratch]
    type = "filesystem"
    root = "/scratch/meridian/results"
    retention_days = 14
    default = true

    [transfers]
    allow_http_presigned_urls = true   # emulators only; https is always allowed
    presigned_url_hosts = ["minio.dc1.internal"]   # default: the public clouds' storage hosts

Every provider named here is enabled on the agent, in addition to ``--provider`` flags. Each
section is handed to the provider as its config, which validates it when the agent starts.
``[secrets.SCHEME]`` sections configure the site's secret resolvers (docs/secrets.md).
``[sealing.keys]`` names the key file of each key group this agent opens sealed step inputs
and seals results with (docs/security.md); the files are read when the agent starts.
``[limits]`` overrides the agent's bounds on results, errors, logs, disk and loop stalls
(``agent.limits.AgentLimits``; the keys and defaults are in docs/reliability.md).
``[result_stores.NAME]`` tables name the site's result stores (``filesystem``, ``s3``,
``gcs``, ``azure_blob``), where results at or above a step's inline threshold, or of a step
that names a store, stay; one is the environment's default (``default = true``, or the only
one). They are validated here (an error names the table) and opened when the agent starts;
``retention_days`` deletes a store's objects older than that (docs/results.md).
``[transfers]`` says how this agent takes results of other environments (presigned URLs:
``accept_presigned_urls``, ``allow_http_presigned_urls``, ``presigned_url_hosts`` — the
only hosts it downloads from); it is carried with the result
stores (``ResultStoresConfig.transfers``), so an agent with no store of its own still has it.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meridian.core.errors import ValidationError

if TYPE_CHECKING:
    from agent.results import ResultStoresConfig

KNOWN_SECTIONS = {"providers", "secrets", "sealing", "limits", "result_stores", "transfers"}


@dataclass(frozen=True)
class AgentFileConfig:
    providers: dict[str, dict[str, Any]]  # provider type -> its config
    secrets: dict[str, dict[str, Any]]  # secret scheme -> resolver settings
    seal_keys: dict[str, str] = field(default_factory=dict)  # key group -> "file:/path"
    limits: dict[str, Any] = field(default_factory=dict)  # AgentLimits field -> value
    # The site's result stores ([result_stores.NAME]) and [transfers], validated; None
    # without either section.
    result_stores: ResultStoresConfig | None = None


def load_agent_config_file(path: Path) -> AgentFileConfig:
    """The sections of a TOML or JSON agent config file, each validated."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValidationError(f"cannot read agent config {path}: {exc.strerror or exc}") from exc
    try:
        raw = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ValidationError(f"agent config {path} is not valid: {exc}") from exc
    if not isinstance(raw, dict):
        raise ValidationError(f"agent config {path} must be a table/object")
    unknown = sorted(set(raw) - KNOWN_SECTIONS)
    if unknown:
        raise ValidationError(
            f"agent config {path}: unknown section(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(KNOWN_SECTIONS))}"
        )
    return AgentFileConfig(
        providers=_tables(raw, "providers", "provider type", path),
        secrets=_tables(raw, "secrets", "secret scheme", path),
        seal_keys=_seal_keys(raw, path),
        limits=_limits(raw, path),
        result_stores=_result_stores(raw, path),
    )


def _result_stores(raw: dict[str, Any], path: Path) -> ResultStoresConfig | None:
    if "result_stores" not in raw and "transfers" not in raw:
        return None
    # The agent's modules, only when used.
    from agent.results.config import parse_result_stores, parse_transfer_settings

    try:
        stores = parse_result_stores(raw.get("result_stores"))
        transfers = parse_transfer_settings(raw.get("transfers"))
    except ValidationError as exc:
        raise ValidationError(f"agent config {path}: {exc}") from None
    return replace(stores, transfers=transfers)


def _limits(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    section = raw.get("limits", {})
    if not isinstance(section, dict):
        raise ValidationError(f"agent config {path}: [limits] must be a table of NAME = number")
    return {str(k): v for k, v in section.items()}


def _seal_keys(raw: dict[str, Any], path: Path) -> dict[str, str]:
    section = raw.get("sealing", {})
    usage = (
        f'agent config {path}: [sealing] holds one table, [sealing.keys], of GROUP = "file:/path"'
    )
    if not isinstance(section, dict) or set(section) - {"keys"}:
        raise ValidationError(usage)
    keys = section.get("keys", {})
    if not isinstance(keys, dict) or not all(isinstance(v, str) for v in keys.values()):
        raise ValidationError(usage)
    return {str(group): reference for group, reference in keys.items()}


def _tables(raw: dict[str, Any], section: str, what: str, path: Path) -> dict[str, dict[str, Any]]:
    tables = raw.get(section, {})
    if not isinstance(tables, dict) or not all(isinstance(t, dict) for t in tables.values()):
        raise ValidationError(f"agent config {path}: [{section}] must hold one table per {what}")
    return {str(kind): dict(table) for kind, table in tables.items()}
