"""Finding providers by their ``type`` string.

Providers register in the entry-point group ``meridian.providers`` (``type = "module:Class"``).
The built-in providers are also known by a fallback map, so a source checkout works without
``pip install``. An installed entry point wins over the fallback of the same name.
"""

from __future__ import annotations

import builtins
import importlib
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from providers.base import Provider, ProviderError

ENTRY_POINT_GROUP = "meridian.providers"

_BUILTIN: Mapping[str, str] = {
    "process": "providers.process:ProcessProvider",
    "slurm": "providers.slurm:SlurmProvider",
    "ray": "providers.ray:RayProvider",
    "kubernetes": "providers.kubernetes:KubernetesProvider",
    "aws-ecs": "providers.aws_ecs:EcsProvider",
    "gcp-cloud-run": "providers.gcp_cloud_run:CloudRunProvider",
    "azure-aci": "providers.azure_aci:AciProvider",
}


def _targets() -> dict[str, str]:
    """Every known provider type and its ``module:attr`` target."""
    targets = dict(_BUILTIN)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        targets[ep.name] = ep.value
    return targets


def available_provider_types() -> list[str]:
    """The provider types that ``load_provider`` can find, sorted."""
    return sorted(_targets())


def _import_target(type: str, target: str) -> Any:
    module_name, _, attr = target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name.strip())
        for part in attr.strip().split(".") if attr.strip() else []:
            obj = getattr(obj, part)
    except ImportError as exc:
        raise ProviderError(
            f"provider {type!r} ({target}) cannot be imported: {exc}; "
            "is the extra that provides its dependencies installed?"
        ) from exc
    except AttributeError as exc:
        raise ProviderError(f"provider {type!r}: entry point {target!r} is broken: {exc}") from exc
    return obj


def load_provider(type: str, config: Mapping[str, Any] | None = None) -> Provider:
    """Create the provider registered as ``type`` with ``config``.

    Raises:
        ProviderError: the type is unknown (the message lists the available ones), its module
            cannot be imported, it is not a Provider, or it rejects ``config``.
    """
    targets = _targets()
    target = targets.get(type)
    if target is None:
        raise ProviderError(
            f"unknown provider type {type!r}; available: {', '.join(sorted(targets)) or 'none'}"
        )
    cls = _import_target(type, target)
    if not (isinstance(cls, builtins.type) and issubclass(cls, Provider)):
        raise ProviderError(f"provider {type!r}: {target} is not a Provider subclass")
    if getattr(cls, "type", None) != type:
        raise ProviderError(
            f"provider {type!r}: {target} declares type {getattr(cls, 'type', None)!r}; "
            "the entry-point name must match the class's type"
        )
    provider: Provider = cls(config)
    return provider
