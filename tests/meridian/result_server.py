"""A fake control plane that serves stored results (``FetchResult``) and the runs naming them
(``GetRun``), over real gRPC with TLS on loopback; the real servicer relays the bytes from an
agent, this one from memory. Knobs make it cut the stream, corrupt it, or report an error."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from meridian.core.resultref import ResultRef
from protos.meridian.v1 import common_pb2, control_pb2, control_pb2_grpc
from tests.support.tls import Tls


@dataclass
class StoredResult:
    data: bytes
    serializer: str = "json"
    sealed: bool = False
    environment: str = "aws-prod"

    def ref(self) -> ResultRef:
        digest = hashlib.sha256(self.data).hexdigest()
        uri = f"s3://bucket/runs/{digest[:8]}/result"
        return ResultRef(
            self.environment, "s3-main", uri, len(self.data), digest, self.serializer, self.sealed
        )


@dataclass
class ResultControl(control_pb2_grpc.ControlServiceServicer):
    """``GetRun`` and ``FetchResult`` of one run's steps: stored results and inline ones."""

    run_id: str = "run-123456"
    stored: dict[str, StoredResult] = field(default_factory=dict)
    inline: dict[str, str] = field(default_factory=dict)
    chunk_bytes: int = 1000
    cut_after_bytes: int | None = None  # abort once with UNAVAILABLE after this many bytes
    corrupt: bool = False  # flip a byte of the body (the announced digest stays right)
    error: str = ""  # send this in a chunk instead of the bytes
    unavailable: str = ""  # answer every fetch UNAVAILABLE with this (no agent can serve it)
    requests: list[tuple[str, str, int]] = field(default_factory=list)

    def GetRun(self, request: Any, context: Any) -> Any:
        if not self.run_id.startswith(request.flow_run_id):
            context.abort(grpc.StatusCode.NOT_FOUND, f"no run {request.flow_run_id}")
        steps = [
            control_pb2.StepRunDetail(
                step_run_id=f"sr-{key}", key=key, name=key.split("#")[0], state="COMPLETED",
                result_ref_json=stored.ref().to_json(),
            )
            for key, stored in self.stored.items()
        ] + [
            control_pb2.StepRunDetail(
                step_run_id=f"sr-{key}", key=key, name=key.split("#")[0], state="COMPLETED",
                result_json=text,
            )
            for key, text in self.inline.items()
        ]  # fmt: skip
        steps.append(control_pb2.StepRunDetail(step_run_id="sr-f", key="failed#1", state="FAILED"))
        return control_pb2.RunDetail(flow_run_id=self.run_id, state="COMPLETED", steps=steps)

    def FetchResult(self, request: Any, context: Any) -> Iterator[common_pb2.ResultChunk]:
        self.requests.append((request.flow_run_id, request.step_key, request.offset))
        stored = self.stored.get(request.step_key)
        if request.flow_run_id != self.run_id or stored is None:
            why = f"step {request.step_key!r} has no stored result"
            context.abort(grpc.StatusCode.NOT_FOUND, why)
        if self.unavailable:
            context.abort(grpc.StatusCode.UNAVAILABLE, self.unavailable)
        if self.error:
            yield common_pb2.ResultChunk(error=self.error)
            return
        body = bytearray(stored.data)
        if self.corrupt and body:
            body[len(body) // 2] ^= 0xFF
        digest = hashlib.sha256(stored.data).hexdigest()
        offset, first = request.offset, True
        while True:
            piece = bytes(body[offset : offset + self.chunk_bytes])
            yield common_pb2.ResultChunk(
                transfer_id="t-1",
                offset=offset,
                data=piece,
                total_size=len(body) if first else 0,
                sha256=digest if first else "",
            )
            first = False
            offset += len(piece)
            if offset >= len(body):
                return
            if self.cut_after_bytes is not None and offset >= self.cut_after_bytes:
                self.cut_after_bytes = None
                context.abort(grpc.StatusCode.UNAVAILABLE, "simulated restart")


@dataclass
class ResultServer:
    fake: ResultControl
    address: str
    ca_file: Path


@contextlib.contextmanager
def serve_results(tls: Tls, directory: Path) -> Iterator[ResultServer]:
    fake = ResultControl()
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    control_pb2_grpc.add_ControlServiceServicer_to_server(fake, server)
    port = server.add_secure_port(
        "127.0.0.1:0", grpc.ssl_server_credentials([(tls.key_pem, tls.cert_pem)])
    )
    server.start()
    ca_file = directory / "ca.crt"
    ca_file.write_bytes(tls.ca_pem)
    try:
        yield ResultServer(fake, f"127.0.0.1:{port}", ca_file)
    finally:
        server.stop(grace=None)
