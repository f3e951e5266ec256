"""Identifiers of stored rows: random UUIDs, so replicas never coordinate to make one."""

from __future__ import annotations

import uuid


def new_id() -> str:
    return str(uuid.uuid4())
