"""Prometheus metrics of the control plane, in a registry of its own (never the global one:
two control planes in one test process must not share counters).

Counters and histograms are observed as things happen (``observer``: attempts and steps that
ended, runs that finished; ``Store.commit_timer``: every transaction). Gauges of how many
runs, steps and queued attempts exist, and of agents per status, are computed at scrape time
from one grouped query (``queries.snapshot``) and the registry of live streams.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from control_plane.telemetry.frames import FrameCounts
from control_plane.telemetry.queries import Snapshot

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds: a step runs from well under a second to hours; a wait from milliseconds to minutes.
DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, float("inf"))
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, float("inf"))
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, float("inf"))


class _Fixed(Collector):
    def __init__(self, metrics: Iterable[Metric]) -> None:
        self._metrics = list(metrics)

    def collect(self) -> Iterator[Metric]:
        return iter(self._metrics)


class Metrics:
    def __init__(self, version: str) -> None:
        self.version = version
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.runs_finished = Counter(
            "meridian_runs_finished", "Flow runs that reached an end state", ["state"], registry=r
        )
        self.attempts_finished = Counter(
            "meridian_attempts_finished",
            "Attempts that ended, by outcome and environment",
            ["state", "environment"],
            registry=r,
        )
        self.attempt_duration = Histogram(
            "meridian_attempt_duration_seconds",
            "Running time of attempts (started to ended)",
            ["environment"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.submit_to_start = Histogram(
            "meridian_attempt_submit_to_start_seconds",
            "Wait of attempts from queued to started (scheduling and provisioning)",
            ["environment"],
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.step_duration = Histogram(
            "meridian_step_duration_seconds",
            "Step runs from submission to their end, retries included",
            ["state"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.commit_latency = Histogram(
            "meridian_store_transaction_seconds",
            "Store transactions (use case and commit) on the store's worker thread",
            buckets=COMMIT_BUCKETS,
            registry=r,
        )

    def observe_commit(self, seconds: float) -> None:
        """``Store.commit_timer``: called on the store's thread (prometheus-client is thread
        safe)."""
        self.commit_latency.observe(seconds)

    def render(
        self,
        snap: Snapshot,
        agents: Iterable[tuple[str, str]],
        frames: FrameCounts | None = None,
    ) -> bytes:
        """The exposition text: the live metrics plus gauges from ``snap`` and ``agents``
        (``(environment, status)`` of every known agent) and the stream ``frames`` counted."""
        per_scrape = CollectorRegistry(auto_describe=False)
        extra = [*self._gauges(snap, agents), *_frame_counters(frames or FrameCounts())]
        per_scrape.register(_Fixed([*self.registry.collect(), *extra]))
        return generate_latest(per_scrape)

    def _gauges(self, snap: Snapshot, agents: Iterable[tuple[str, str]]) -> list[Metric]:
        info = InfoMetricFamily("meridian_build", "Control plane version")
        info.add_metric([], {"version": self.version})
        runs = GaugeMetricFamily("meridian_runs", "Flow runs by state", labels=["state"])
        for state, n in sorted(snap.runs_by_state.items()):
            runs.add_metric([state], n)
        steps = GaugeMetricFamily("meridian_steps", "Step runs by state", labels=["state"])
        for state, n in sorted(snap.steps_by_state.items()):
            steps.add_metric([state], n)
        queue = GaugeMetricFamily(
            "meridian_queue_depth",
            "Queued attempts by the environment(s) their target allows ('any': unbounded)",
            labels=["environment"],
        )
        for environment, n in sorted(snap.queued_by_environment.items()):
            queue.add_metric([environment], n)
        waiting = GaugeMetricFamily(
            "meridian_attempts_waiting",
            "Queued attempts by where they may run and why they wait (the latest "
            "attempt.waiting reason; retry_delay; not_explained_yet)",
            labels=["environment", "reason"],
        )
        for (environment, reason), n in sorted(snap.waiting.items()):
            waiting.add_metric([environment, reason], n)
        counted: dict[tuple[str, str], int] = {}
        for key in agents:
            counted[key] = counted.get(key, 0) + 1
        agent_family = GaugeMetricFamily(
            "meridian_agents",
            "Known agents by environment and status",
            labels=["environment", "status"],
        )
        for (environment, status), n in sorted(counted.items()):
            agent_family.add_metric([environment, status], n)
        return [info, runs, steps, queue, waiting, agent_family]


def _frame_counters(frames: FrameCounts) -> list[Metric]:
    received = CounterMetricFamily(
        "meridian_stream_frames_received",
        "Frames received on agents' streams, by kind",
        labels=["kind"],
    )
    for kind, n in sorted(frames.received_by_kind.items()):
        received.add_metric([kind], n)
    sent = CounterMetricFamily(
        "meridian_stream_frames_sent",
        "Frames sent on agents' streams, by kind",
        labels=["kind"],
    )
    for kind, n in sorted(frames.sent_by_kind.items()):
        sent.add_metric([kind], n)
    return [received, sent]
