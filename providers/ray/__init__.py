"""The ``ray`` provider: each attempt is one Ray job submitted through the Job Submission API.

Owns the provider (``provider``), typed config and the ``submit_job`` request (``config``), the
typed handle and the stop reasons kept in the work dir (``state``) and the entrypoint wrapper
that runs on the cluster (``entry``, standard library only).
"""

from __future__ import annotations

from providers.ray.provider import RayProvider

__all__ = ["RayProvider"]
