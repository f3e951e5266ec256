"""The agent's own optional Prometheus endpoint (``meridian agent start --metrics-listen
HOST:PORT``; off by default). It binds exactly the address it is given and serves plain HTTP
text: put it on a loopback or site-internal address.

Everything is read at scrape time from the agent's own state (no second bookkeeping):

| metric | type | labels |
|---|---|---|
| ``meridian_agent_slots_in_use`` / ``meridian_agent_slots_capacity`` | gauge | — |
| ``meridian_agent_journal_pending_reports`` | gauge (reports not yet acknowledged) | — |
| ``meridian_agent_journal_quarantined_reports`` | gauge | — |
| ``meridian_agent_degraded`` | gauge 0/1 | ``reason`` (when degraded) |
| ``meridian_agent_loop_stalls_total`` | counter (event-loop stalls above the threshold) | — |

prometheus-client comes with the ``web`` extra and is imported only when the endpoint is
asked for.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

MAX_LABEL_CHARS = 64


class MetricsUnavailable(RuntimeError):
    """prometheus-client is not installed."""


@dataclass
class AgentGauges:
    """Where the endpoint reads the agent's state; each callable must be cheap and thread safe
    (scrapes run on the HTTP server's thread)."""

    slots_in_use: Callable[[], int]
    capacity: int
    journal_pending: Callable[[], int]
    journal_quarantined: Callable[[], int]
    degraded: Callable[[], str]
    provider_errors: Callable[[], dict[str, int]] = dict


class ProviderErrors:
    """How often each provider failed to start or watch a step (kept whether or not the
    endpoint is on: counting is cheap). Incremented on the event loop, read by scrapes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_provider: dict[str, int] = {}

    def count(self, provider: str) -> None:
        with self._lock:
            self._by_provider[provider] = self._by_provider.get(provider, 0) + 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._by_provider)


class AgentMetrics:
    """The stall counter the agent's watchdog feeds, plus the gauges read at scrape."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stalls = 0
        self.gauges: AgentGauges | None = None
        self._server: Any = None

    def loop_stalled(self, seconds: float) -> None:
        with self._lock:
            self._stalls += 1

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        with self._lock:
            stalls = self._stalls
        g = self.gauges
        if g is not None:
            yield GaugeMetricFamily(
                "meridian_agent_slots_in_use", "Attempts this agent runs now", g.slots_in_use()
            )
            yield GaugeMetricFamily(
                "meridian_agent_slots_capacity", "Attempts this agent may run at once", g.capacity
            )
            yield GaugeMetricFamily(
                "meridian_agent_journal_pending_reports",
                "Reports journaled and not yet acknowledged by the control plane",
                g.journal_pending(),
            )
            yield GaugeMetricFamily(
                "meridian_agent_journal_quarantined_reports",
                "Reports the control plane could not accept, kept aside in the journal",
                g.journal_quarantined(),
            )
            reason = g.degraded()[:MAX_LABEL_CHARS]
            degraded = GaugeMetricFamily(
                "meridian_agent_degraded",
                "1 while the agent is degraded (takes no new work), with the reason",
                labels=["reason"],
            )
            degraded.add_metric([reason or "none"], 1 if reason else 0)
            yield degraded
            errors = CounterMetricFamily(
                "meridian_agent_provider_errors",
                "Steps a provider could not start or watch, by provider",
                labels=["provider"],
            )
            for provider, n in sorted(g.provider_errors().items()):
                errors.add_metric([provider[:MAX_LABEL_CHARS]], n)
            yield errors
        yield CounterMetricFamily(
            "meridian_agent_loop_stalls",
            "Times the agent's event loop was blocked longer than its threshold",
            stalls,
        )

    def serve(self, listen: str) -> tuple[str, int]:
        """Start the endpoint on ``listen`` (``host:port``; port 0 picks a free one) in a
        daemon thread; returns the bound address."""
        try:
            from prometheus_client import CollectorRegistry, start_http_server
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise MetricsUnavailable(
                "--metrics-listen needs prometheus-client: pip install 'meridian-orchestrator[web]'"
            ) from exc
        host, port = parse_listen(listen)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)  # type: ignore[arg-type]
        server, _ = start_http_server(port, addr=host, registry=registry)
        self._server = server
        bound_host, bound_port = server.server_address[:2]
        return str(bound_host), int(bound_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port_text = listen.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"--metrics-listen wants HOST:PORT, got {listen!r}")
    return host, int(port_text)
