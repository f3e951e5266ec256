"""Metrics and traces of a real two-environment run: a control plane process with the web
listener and an OTLP endpoint (a small OTLP/HTTP receiver in this test), two real agents."""

from __future__ import annotations

import http.server
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from meridian.core.tracecontext import span_id_for_attempt, span_id_for_run, trace_id_for_run
from tests.integration.harness import Estate, free_port
from tests.support.deadlines import DEADLINE_S
from tests.support.polling import poll_until

pytestmark = pytest.mark.integration
FLOWS = Path(__file__).resolve().parent / "flows.py"


class OtlpReceiver(http.server.ThreadingHTTPServer):
    """Accepts OTLP/HTTP protobuf exports on /v1/traces and keeps the decoded spans."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        received: list[object] = []
        self.received = received

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                request = trace_service_pb2.ExportTraceServiceRequest()
                request.ParseFromString(body)
                for resource_spans in request.resource_spans:
                    for scope_spans in resource_spans.scope_spans:
                        received.extend(scope_spans.spans)
                reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)


class TelemetryEstate(Estate):
    def __init__(self, root: Path, otlp: str) -> None:
        super().__init__(root)
        self.http_address = f"127.0.0.1:{free_port()}"
        self.otlp = otlp

    def _server_args(self) -> list[str]:
        return [
            *super()._server_args(),
            "--http-listen",
            self.http_address,
            "--otlp-endpoint",
            self.otlp,
            "--log-format",
            "json",
        ]


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    server = OtlpReceiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def estate(tmp_path_factory: pytest.TempPathFactory, receiver: OtlpReceiver) -> Iterator[Estate]:
    root = tmp_path_factory.mktemp("telemetry")
    port = receiver.server_address[1]
    with TelemetryEstate(root, f"http://127.0.0.1:{port}") as e:
        e.add_agent("aws-t", {"cloud": "aws"})
        e.add_agent("gcp-t", {"cloud": "gcp"})
        yield e


def scrape(estate: TelemetryEstate, token: str | None) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(
        verify=ssl.create_default_context(cafile=estate.ca_file), timeout=DEADLINE_S
    ) as client:
        return client.get(f"https://{estate.http_address}/metrics", headers=headers)


def completed_runs(estate: TelemetryEstate, token: str) -> float:
    response = scrape(estate, token)
    assert response.status_code == 200, response.text
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == "meridian_runs_finished_total" and sample.labels == {
                "state": "COMPLETED"
            }:
                return sample.value
    return 0.0


def test_metrics_parse_and_count_a_completed_run(estate: TelemetryEstate, tmp_path: Path) -> None:
    viewer = estate.new_api_token("viewer")
    assert scrape(estate, None).status_code == 401
    assert scrape(estate, "mat_0000000000000000." + "x" * 43).status_code == 403
    before = completed_runs(estate, viewer)
    families = {f.name for f in text_string_to_metric_families(scrape(estate, viewer).text)}
    assert {"meridian_runs", "meridian_agents", "meridian_store_transaction_seconds"} <= families

    estate.cli("run", f"{FLOWS}:two_clouds", "-p", f"work={tmp_path}", check=True)
    poll_until(
        lambda: completed_runs(estate, viewer) == before + 1,
        message="meridian_runs_finished_total{state=COMPLETED} to count the run",
    )
    text = scrape(estate, viewer).text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    assert samples[("meridian_attempt_duration_seconds_count", (("environment", "gcp-t"),))] >= 2
    assert samples[("meridian_agents", (("environment", "aws-t"), ("status", "connected")))] == 1


def test_a_two_environment_run_is_one_trace_with_a_span_per_attempt(
    estate: TelemetryEstate, receiver: OtlpReceiver, tmp_path: Path
) -> None:
    estate.cli("run", f"{FLOWS}:two_clouds", "-p", f"work={tmp_path}", check=True)
    run_id = estate.latest_run_id("two_clouds")
    trace_id = trace_id_for_run(run_id).to_bytes(16, "big")

    def spans() -> list:
        return [s for s in receiver.received if s.trace_id == trace_id]  # type: ignore[attr-defined]

    found = poll_until(lambda: len(spans()) >= 4 and spans(), message="the run's spans")
    detail = estate.client().get_run(run_id)
    attempts = [a for step in detail.steps for a in step.attempts]
    assert len(attempts) == 3  # fetch#1, crunch#1 failed, crunch#2 recovered
    root = span_id_for_run(run_id).to_bytes(8, "big")
    by_id = {s.span_id: s for s in found}
    assert by_id[root].parent_span_id == b""
    for attempt in attempts:
        span = by_id[span_id_for_attempt(attempt.attempt_id).to_bytes(8, "big")]
        assert span.parent_span_id == root
        attrs = {kv.key: kv.value.string_value for kv in span.attributes}
        assert attrs["meridian.environment"] == attempt.environment
    assert len(found) == 1 + len(attempts)
    # The server logged JSON lines (--log-format json).
    server_log = (estate.root / "server.log").read_text()
    assert any(line.startswith('{"ts": ') for line in server_log.splitlines())


def samples_of(estate: TelemetryEstate, token: str, name: str) -> dict[tuple, float]:  # type: ignore[type-arg]
    response = scrape(estate, token)
    assert response.status_code == 200, response.text
    return {
        tuple(sorted(s.labels.items())): s.value
        for f in text_string_to_metric_families(response.text)
        for s in f.samples
        if s.name == name
    }


def test_waiting_reasons_and_stream_frames(estate: TelemetryEstate, tmp_path: Path) -> None:
    viewer = estate.new_api_token("viewer")
    frames_in = "meridian_stream_frames_received_total"
    frames_out = "meridian_stream_frames_sent_total"
    heartbeats = poll_until(
        lambda: samples_of(estate, viewer, frames_in).get((("kind", "heartbeat"),), 0.0),
        message="heartbeat frames to be counted",
    )
    poll_until(
        lambda: samples_of(estate, viewer, frames_in)[(("kind", "heartbeat"),)] > heartbeats,
        message="the heartbeat frame counter to move",
    )
    sent_before = sum(samples_of(estate, viewer, frames_out).values())

    runner = estate.run_background(FLOWS, "stranded")
    run_id = estate.latest_run_id("stranded")
    try:
        waiting = poll_until(
            lambda: {
                dict(labels)["reason"]: n
                for labels, n in samples_of(estate, viewer, "meridian_attempts_waiting").items()
                if n >= 1 and dict(labels)["reason"] != "not_explained_yet"
            },
            message="meridian_attempts_waiting to say why the stranded step waits",
        )
        assert set(waiting) <= {"no_match", "no_agents", "no_provider"}, waiting
        assert sum(waiting.values()) == 1
    finally:
        estate.client().cancel_run(run_id, "test over")
        estate.wait_for_state(run_id, {"CANCELLED"})
        runner.kill()
        runner.wait()
    poll_until(
        lambda: not any(samples_of(estate, viewer, "meridian_attempts_waiting").values()),
        message="no attempt to wait once the run is cancelled",
    )
    estate.cli("run", f"{FLOWS}:two_clouds", "-p", f"work={tmp_path}", check=True)
    sent = samples_of(estate, viewer, frames_out)
    assert sent.get((("kind", "assign"),), 0) >= 1
    assert sum(sent.values()) > sent_before
