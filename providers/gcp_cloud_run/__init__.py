"""The ``gcp-cloud-run`` provider: each attempt is one execution of a Cloud Run job.

Owns the provider (``provider``), typed config and options (``config``), the SDK and its clients
(``client``), the typed handle and execution states (``state``) and reading output back from
Cloud Logging (``logs``). The Google libraries are imported only on first use.
"""

from __future__ import annotations

from providers.gcp_cloud_run.provider import CloudRunProvider

__all__ = ["CloudRunProvider"]
