"""The hash chain itself: canonical encodings and the record hash. Pure functions, no I/O.

Everything that goes into a hash is first turned into one canonical text, so the same record
always hashes the same on SQLite and PostgreSQL, today and after a re-export.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from typing import Any

# The predecessor of the first record.
GENESIS_HASH = "0" * 64
# Bumped if the encoding below ever changes, so old and new records stay verifiable.
HASH_VERSION = 1


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, UTF-8 kept as is, NaN/Infinity refused (not JSON)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)  # fmt: skip


def format_at(at: dt.datetime) -> str:
    """UTC with microseconds: the precision both stores keep, so it survives a round trip."""
    if at.tzinfo is None:
        raise ValueError("audit timestamps must be timezone-aware")
    return at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_at(text: str) -> dt.datetime:
    """Inverse of :func:`format_at`."""
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)


def record_hash(
    *,
    record_id: int,
    at: dt.datetime,
    actor: str,
    action: str,
    subject: str,
    details: str,
    prev_hash: str,
) -> str:
    """SHA-256 (hex) of the canonical encoding of one record, its predecessor's hash included.

    ``details`` is the stored canonical JSON text, hashed as a string: re-parsing it could
    normalise numbers or key order and hide an edit.
    """
    encoded = canonical_json(
        {
            "v": HASH_VERSION,
            "id": record_id,
            "at": format_at(at),
            "actor": actor,
            "action": action,
            "subject": subject,
            "details": details,
            "prev_hash": prev_hash,
        }
    )
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()


def digest_text(text: str | None) -> str:
    """SHA-256 of a payload (parameters, inputs, results); empty when there is none."""
    if not text:
        return ""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def details_text(details: Mapping[str, Any]) -> str:
    return canonical_json(dict(details))
