"""The ``process`` provider: each attempt runs on this host, in a warm worker or a fresh process.

Owns the provider (``provider``), the pool of warm step workers and its pipe protocol
(``pool``; the worker is ``meridian.stepworker``), the typed handle and the files an attempt
leaves in its work dir (``state``), config and option checks (``config``) and watching
processes and process groups by pid, pidfd and start time (``proctree``).
"""

from __future__ import annotations

from providers.process.provider import ProcessProvider

__all__ = ["ProcessProvider"]
