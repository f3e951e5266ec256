"""The ``azure-aci`` provider: each attempt is one Azure Container Instances container group.

Owns the provider (``provider``), typed config and the container group (``config``), the SDK and
its management client (``client``) and the attempt's records and how a group maps to an
Outcome (``state``). The Azure SDK is imported only on first use.
"""

from __future__ import annotations

from providers.azure_aci.config import AciConfig
from providers.azure_aci.provider import AciProvider

__all__ = ["AciConfig", "AciProvider"]
