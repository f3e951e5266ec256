"""The agent's config file: one section per provider (endpoints, clusters, credentials refs).

TOML (or JSON, by extension)::

    [providers.aws-ecs]
    region = "eu-west-1"
    cluster = "analytics"
    task_definition = "meridian-step"

    [providers.slurm]
    partition = "batch"

Every provider named here is enabled on the agent, in addition to ``--provider`` flags. Each
section is handed to the provider as its config, which validates it when the agent starts.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from meridian.errors import ValidationError

KNOWN_SECTIONS = {"providers"}


def load_agent_config_file(path: Path) -> dict[str, dict[str, Any]]:
    """Provider type -> its config mapping, from a TOML or JSON file."""
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
    providers = raw.get("providers", {})
    if not isinstance(providers, dict) or not all(
        isinstance(section, dict) for section in providers.values()
    ):
        raise ValidationError(
            f"agent config {path}: [providers] must hold one table per provider type"
        )
    return {str(kind): dict(section) for kind, section in providers.items()}
