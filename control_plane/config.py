"""The control plane's settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from control_plane.store.db import sqlite_url

MiB = 1024 * 1024


@dataclass(frozen=True)
class ServerConfig:
    data_dir: Path
    listen: str = "127.0.0.1:7443"
    # Agents connect here with their client certificate (mutual TLS). Port 0 picks a free port.
    agent_listen: str = "127.0.0.1:7444"
    # What agents are told to dial when it differs from agent_listen (e.g. behind a proxy).
    advertise_agent_address: str | None = None
    db_url: str | None = None
    heartbeat_interval_s: float = 5.0
    agent_lost_after_s: float = 30.0
    # After a start, runs whose runner lease lapsed are not declared CRASHED for this long:
    # runners could not renew while the control plane was down.
    runner_grace_s: float = 30.0
    max_bundle_bytes: int = 64 * MiB
    max_message_bytes: int = 16 * MiB
    max_frame_bytes: int = 4 * MiB
    agent_certificate_hours: float = 24.0
    # Longest a unary or upload call may run on the server (control_plane/api/budgets.py).
    call_budget_s: float = 60.0
    server_names: tuple[str, ...] = ("localhost", "127.0.0.1")
    # The web console and /metrics over HTTPS (same certificate); off unless given.
    http_listen: str | None = None
    # Serve /metrics without a token (for a scraper on a trusted network).
    metrics_public: bool = False
    # OTLP/HTTP endpoint traces of finished runs go to (extra "otel"); off unless given.
    otlp_endpoint: str | None = None
    # Finished runs are deleted (with their stored result objects) this many days after they
    # ended; 0 keeps them for ever (docs/results.md, "Clean-up").
    run_retention_days: float = 0.0

    @property
    def database_url(self) -> str:
        return self.db_url or sqlite_url(self.data_dir / "meridian.db")
