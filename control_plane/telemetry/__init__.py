"""Telemetry of the control plane: Prometheus metrics, OpenTelemetry traces of runs, and the
fleet status every view of agents shares (docs/operations.md).

It sits beside the scheduler in the layers: it reads the store with cheap grouped queries of
its own (``queries``), observes committed effects (``observer``) and never changes state.
"""

__all__ = ["fleet", "metrics", "observer", "queries", "tracing"]
