"""Meridian's control plane: stores flows, runs and their history; schedules steps onto agents.

The public names are imported on first use (PEP 562), so importing one layer (say
``control_plane.orchestration``) does not load the server and every layer above it.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "ControlPlane": "control_plane.server",
    "ServerConfig": "control_plane.config",
    "create_api_token": "control_plane.admin",
    "create_join_token": "control_plane.admin",
}

__all__ = ["ControlPlane", "ServerConfig", "create_api_token", "create_join_token"]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'control_plane' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
