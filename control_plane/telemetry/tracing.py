"""OpenTelemetry traces of flow runs, exported over OTLP/HTTP when a run ends (extra ``otel``).

One trace per run (trace id from the run id), a root span for the run and one child span per
attempt (span ids from the run and attempt ids: ``meridian/core/tracecontext.py``). The spans
are built from the stored times once the run has ended rather than kept open in memory: a
control plane that restarts mid-run loses nothing, and a resumed run exports again with the
same ids (tracing backends merge spans by id).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from control_plane.telemetry.queries import AttemptFacts, RunFacts
from meridian.core.tracecontext import (
    TRACE_FLAGS_SAMPLED,
    span_id_for_attempt,
    span_id_for_run,
    trace_id_for_run,
)

log = logging.getLogger(__name__)
SERVICE_NAME = "meridian-control-plane"
FAILED_RUN = frozenset({"FAILED", "CRASHED"})
FAILED_ATTEMPT = frozenset({"FAILED", "LOST", "TIMED_OUT"})
INSTALL_HINT = "install the extra: pip install 'meridian-orchestrator[otel]'"


def traces_url(endpoint: str) -> str:
    """``http://collector:4318`` → ``http://collector:4318/v1/traces``; a full path is kept."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"OTLP endpoint must be an http(s) URL, got {endpoint!r}")
    return endpoint if parts.path not in ("", "/") else endpoint.rstrip("/") + "/v1/traces"


def _ns(at: dt.datetime) -> int:
    return (at - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1) * 1000


def build_spans(run: RunFacts, agent_names: dict[str, str] | None = None) -> list[Any]:
    """The run's root span and one span per attempt, as SDK ``ReadableSpan`` values."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

    names = agent_names or {}
    resource = Resource.create({"service.name": SERVICE_NAME})
    trace_id = trace_id_for_run(run.id)
    flags = TraceFlags(TRACE_FLAGS_SAMPLED)
    root = SpanContext(trace_id, span_id_for_run(run.id), is_remote=False, trace_flags=flags)
    end = run.ended_at or max((a.ended_at for a in run.attempts if a.ended_at), default=None)
    failed = run.state in FAILED_RUN
    spans = [
        ReadableSpan(
            name=f"flow run {run.flow_name}",
            context=root,
            parent=None,
            resource=resource,
            attributes={
                "meridian.run.id": run.id,
                "meridian.flow": run.flow_name,
                "meridian.run.state": run.state,
            },
            kind=SpanKind.INTERNAL,
            start_time=_ns(run.created_at),
            end_time=_ns(end or run.created_at),
            status=Status(StatusCode.ERROR if failed else StatusCode.OK),
        )
    ]
    for attempt in run.attempts:
        spans.append(_attempt_span(attempt, root, resource, names, run.id))
    return spans


def _attempt_span(
    a: AttemptFacts, root: Any, resource: Any, names: dict[str, str], run_id: str
) -> Any:
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode

    context = SpanContext(
        root.trace_id, span_id_for_attempt(a.id), is_remote=False, trace_flags=root.trace_flags
    )
    start = a.started_at or a.queued_at
    end = a.ended_at or start
    attributes: dict[str, Any] = {
        "meridian.run.id": run_id,
        "meridian.step.key": a.step_key,
        "meridian.attempt.id": a.id,
        "meridian.attempt.number": a.number,
        "meridian.attempt.state": a.state,
        "meridian.environment": a.environment,
        "meridian.agent": names.get(a.agent_id, a.agent_id),
        "meridian.provider": a.provider,
        "meridian.attempt.wait_s": (start - a.queued_at).total_seconds(),
    }
    if a.error_type:
        attributes["error.type"] = a.error_type
    failed = a.state in FAILED_ATTEMPT
    return ReadableSpan(
        name=f"{a.step_key} attempt {a.number}",
        context=context,
        parent=root,
        resource=resource,
        attributes=attributes,
        kind=SpanKind.INTERNAL,
        start_time=_ns(start),
        end_time=_ns(end),
        status=Status(StatusCode.ERROR if failed else StatusCode.OK),
    )


class RunTraceExporter:
    """Sends a finished run's spans to an OTLP/HTTP endpoint (blocking: call off the loop)."""

    def __init__(self, endpoint: str, exporter: Any | None = None) -> None:
        self.endpoint = traces_url(endpoint)
        if exporter is None:
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter,
                )
            except ImportError as exc:
                raise RuntimeError(f"--otlp-endpoint needs OpenTelemetry; {INSTALL_HINT}") from exc
            exporter = OTLPSpanExporter(endpoint=self.endpoint, timeout=10)
        self._exporter = exporter

    def export(self, runs: Sequence[RunFacts]) -> None:
        spans = [span for run in runs for span in build_spans(run)]
        if spans and self._exporter.export(spans).name != "SUCCESS":
            log.warning("exporting %d span(s) to %s failed", len(spans), self.endpoint)

    def shutdown(self) -> None:
        self._exporter.shutdown()
