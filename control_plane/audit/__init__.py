"""The tamper-evident audit log: an append-only, hash-chained record of who did what.

Appends happen inside the transaction of the change they record (see ``_log``); each record
carries the SHA-256 of its predecessor, so ``verify_chain`` can tell when any record was
edited, removed or reordered. docs/audit.md explains what is recorded and its limits.
"""

from control_plane.audit import _records as records
from control_plane.audit._chain import GENESIS_HASH, canonical_json, format_at, record_hash
from control_plane.audit._log import (
    CLI,
    SYSTEM,
    agent_actor,
    append,
    list_records,
    token_actor,
)
from control_plane.audit._verify import VerifyReport, verify_chain
from control_plane.store.tx import acting_as, current_actor

__all__ = [
    "CLI",
    "GENESIS_HASH",
    "SYSTEM",
    "VerifyReport",
    "acting_as",
    "agent_actor",
    "append",
    "canonical_json",
    "current_actor",
    "format_at",
    "list_records",
    "record_hash",
    "records",
    "token_actor",
    "verify_chain",
]
