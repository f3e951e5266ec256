"""The bounds an agent keeps on what a step may make it hold, send or wait for.

Every payload a runner hands to the journal is checked against these first (``agent.bounds``),
so the journal never holds a report the control plane would refuse; logs are capped per step
(``agent.logbatch``); the health probe and the loop watchdog use the thresholds at the end.
The defaults are documented in docs/reliability.md and set in the ``[limits]`` table of the
agent config file (``meridian agent start --config``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

MiB = 1024 * 1024

# What a report needs on the wire on top of its journaled payload (seq, ids, token, framing)
# plus room for the rest of the batch frame it travels in.
FRAME_HEADROOM_BYTES = 64 * 1024
# Limits for which 0 means "off" rather than nonsense.
_ZERO_ALLOWED = frozenset({"report_linger_s"})
# A linger is meant to be a few milliseconds; more only delays every report.
MAX_REPORT_LINGER_S = 0.5


@dataclass(frozen=True)
class AgentLimits:
    """Per-agent bounds; see docs/reliability.md ("Bounds on what a step can do")."""

    # A step's result (its JSON text) and error (message + traceback), in bytes. Above either,
    # the attempt fails permanently with an explanation. Capped further by the control plane's
    # negotiated frame size (Welcome.max_frame_bytes) minus FRAME_HEADROOM_BYTES.
    max_result_bytes: int = 3 * MiB
    max_error_bytes: int = 1 * MiB
    # Per-step logs: the first log_head_bytes and the last log_tail_bytes are kept; what lies
    # between is dropped and counted, with a notice in the step's logs.
    log_head_bytes: int = 4 * MiB
    log_tail_bytes: int = 1 * MiB
    # Sustained log shipping rate per step (bytes/s) and the burst above it; lines beyond it are
    # dropped (counted and noticed) rather than queued without bound.
    log_rate_bytes_per_s: int = 1 * MiB
    log_burst_bytes: int = 8 * MiB
    # Degraded (disk_full) below this much free space in the data dir; clears above twice it.
    min_free_bytes: int = 16 * MiB
    # Space kept in reserve in the data dir so the journal can record why attempts failed
    # even after a step filled the disk (released when a write fails, re-taken on recovery).
    disk_reserve_bytes: int = 4 * MiB
    # How often a degraded agent checks whether the fault cleared, in seconds.
    health_probe_s: float = 2.0
    # The event-loop watchdog logs a stall longer than this, in seconds.
    loop_stall_s: float = 1.0
    # How long the connection waits after reports were committed before sending them, so
    # reports committed a moment later travel in the same batch frame (0: send at once).
    report_linger_s: float = 0.0

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> AgentLimits:
        """Limits from a config table; unknown keys and non-positive values are refused."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise ValueError(
                f"unknown limit(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        values: dict[str, Any] = {}
        for key, value in raw.items():
            kind = float if known[key].type in ("float", float) else int
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"limit {key} must be a positive number, not {value!r}")
            if value < 0 or (value == 0 and key not in _ZERO_ALLOWED):
                raise ValueError(f"limit {key} must be a positive number, not {value!r}")
            if key == "report_linger_s" and value > MAX_REPORT_LINGER_S:
                raise ValueError(
                    f"limit {key} must be at most {MAX_REPORT_LINGER_S} s, not {value!r}"
                )
            if kind is int and value != int(value):
                raise ValueError(f"limit {key} must be a whole number of bytes, not {value!r}")
            values[key] = kind(value)
        return cls(**values)

    def payload_limit(self, max_frame_bytes: int) -> int:
        """The largest journaled report payload the control plane will take."""
        if max_frame_bytes <= 0:
            return 16 * MiB - FRAME_HEADROOM_BYTES
        return max(4096, max_frame_bytes - FRAME_HEADROOM_BYTES)
