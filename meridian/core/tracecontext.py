"""Trace context derived from Meridian's own ids, so every component names the same spans.

A flow run is one trace and each attempt one span in it, as seen by OpenTelemetry. The ids are
not random: they are computed from the run id and the attempt id, so the control plane (which
exports the spans when a run ends, from stored times) and the agent (which can hand a step's
process a ``TRACEPARENT`` for the attempt it runs) agree without ever exchanging ids.

- trace id: the run id's 128 bits when it is a UUID (so ``<run id without dashes>`` finds the
  trace in any tracing UI), otherwise the first 16 bytes of ``sha256("meridian-run:" + id)``;
- span id of the run's root span: 8 bytes of ``sha256("meridian-run-span:" + run id)``;
- span id of an attempt: 8 bytes of ``sha256("meridian-attempt:" + attempt id)``.

Zero ids are invalid in W3C Trace Context; a derivation that yields zero uses 1 instead.
"""

from __future__ import annotations

import hashlib
import uuid

TRACE_FLAGS_SAMPLED = 0x01


def _hash_int(prefix: str, value: str, size: int) -> int:
    digest = hashlib.sha256(f"{prefix}:{value}".encode()).digest()
    return int.from_bytes(digest[:size], "big") or 1


def trace_id_for_run(run_id: str) -> int:
    """The 128-bit trace id of flow run ``run_id``."""
    try:
        return uuid.UUID(run_id).int or 1
    except ValueError:
        return _hash_int("meridian-run", run_id, 16)


def span_id_for_run(run_id: str) -> int:
    """The 64-bit span id of the run's root span (the parent of every attempt span)."""
    return _hash_int("meridian-run-span", run_id, 8)


def span_id_for_attempt(attempt_id: str) -> int:
    """The 64-bit span id of one attempt."""
    return _hash_int("meridian-attempt", attempt_id, 8)


def traceparent(run_id: str, attempt_id: str) -> str:
    """The W3C ``traceparent`` for the process running ``attempt_id`` of ``run_id``: spans the
    step creates become children of the attempt's span."""
    trace_id = trace_id_for_run(run_id)
    span_id = span_id_for_attempt(attempt_id)
    return f"00-{trace_id:032x}-{span_id:016x}-{TRACE_FLAGS_SAMPLED:02x}"
