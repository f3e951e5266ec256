"""The ``process`` provider: each attempt is a local subprocess in its own process group.

Owns the provider (``provider``), the typed handle and the files an attempt leaves in its work
dir (``state``), config and option checks (``config``) and reading process groups from
``/proc`` (``proctree``).
"""

from __future__ import annotations

from providers.process.provider import ProcessProvider

__all__ = ["ProcessProvider"]
