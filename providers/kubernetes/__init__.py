"""The ``kubernetes`` provider: each attempt is one batch/v1 Job.

Owns the provider (``provider``), typed config and options (``config``), the Job manifest
(``manifest``), the API client wrapper (``client``) and status reading plus the attempt's local
records (``state``). The ``kubernetes`` package is imported only on first use.
"""

from __future__ import annotations

from providers.kubernetes.client import KubernetesApiError
from providers.kubernetes.config import KubernetesConfig
from providers.kubernetes.provider import KubernetesProvider

__all__ = ["KubernetesApiError", "KubernetesConfig", "KubernetesProvider"]
