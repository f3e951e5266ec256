"""``ControlClient.fetch_result``: a step's stored result streamed into a file, checked and
resumed on the way."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from meridian import models
from meridian.core.errors import ConflictError, ConnectionFailed, MeridianError
from meridian.core.resultref import MAX_RESULT_BYTES, ResultRef
from meridian.rpcerrors import _code, _details
from protos.meridian.v1 import common_pb2, control_pb2

if TYPE_CHECKING:
    from meridian.client import ControlClient

_SHA256 = re.compile(r"[0-9a-f]{64}")


class _ResultDownload:
    """One ``fetch_result``: the stream's chunks checked in order and digested on the way to
    a ``.part`` file, resumed from its offset after a restart, renamed when complete."""

    RESUMES = 5

    def __init__(
        self,
        client: ControlClient,
        flow_run_id: str,
        step_key: str,
        dest: Path,
        expected: ResultRef | None,
    ) -> None:
        self.client = client
        self.flow_run_id = flow_run_id
        self.step_key = step_key
        self.dest = dest
        self.expected = expected
        self.where = f"the stored result of step {step_key!r} of run {flow_run_id}"
        self.size: int | None = None
        self.sha256 = ""
        self.received = 0
        self.digest = hashlib.sha256()

    def run(self) -> models.FetchedResult:
        part = self.dest.with_name(f"{self.dest.name}.part")
        try:
            with open(part, "wb") as out:
                self._stream_into(out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(part, self.dest)
        except BaseException:
            with contextlib.suppress(OSError):
                part.unlink()
            raise
        return models.FetchedResult(self.dest, self.received, self.sha256)

    def _stream_into(self, out: Any) -> None:
        resumes = 0
        while True:
            request = control_pb2.FetchRunResultRequest(
                flow_run_id=self.flow_run_id, step_key=self.step_key, offset=self.received
            )
            before = self.received
            try:
                for chunk in self.client._stub.FetchResult(request, metadata=self.client._metadata):
                    self._take(chunk, out)
                break
            except grpc.RpcError as exc:
                progressed = self.received > before
                resumes = 0 if progressed else resumes + 1
                if _code(exc) != grpc.StatusCode.UNAVAILABLE or resumes > self.RESUMES:
                    raise self._error(exc) from None
                time.sleep(min(0.2 * 2**resumes, 2.0) * random.uniform(0.5, 1.0))
        self._finish()

    def _error(self, exc: grpc.RpcError) -> MeridianError:
        """A reached control plane answers UNAVAILABLE when no agent can serve the bytes now
        (e.g. none of the producing environment is connected): say that, not "unreachable"."""
        reached = self.client._reached or self.size is not None
        if reached and _code(exc) == grpc.StatusCode.UNAVAILABLE:
            return ConnectionFailed(f"cannot download {self.where} now: {_details(exc)}")
        return self.client._map_error(exc)

    def _take(self, chunk: common_pb2.ResultChunk, out: Any) -> None:
        if chunk.error:
            raise ConflictError(f"cannot download {self.where}: {chunk.error}")
        if chunk.sha256 or self.size is None:
            self._announce(chunk.total_size, chunk.sha256)
        if chunk.offset != self.received:
            raise ConflictError(
                f"{self.where}: a chunk starts at byte {chunk.offset}, expected {self.received}"
            )
        assert self.size is not None
        if self.received + len(chunk.data) > self.size:
            raise ConflictError(f"{self.where}: more bytes arrived than the {self.size} announced")
        out.write(chunk.data)
        self.digest.update(chunk.data)
        self.received += len(chunk.data)

    def _announce(self, size: int, sha256: str) -> None:
        """The first chunk of a stream names the object; a resumed stream must name the same."""
        if not 0 <= size <= MAX_RESULT_BYTES or not _SHA256.fullmatch(sha256):
            raise ConflictError(f"{self.where}: the stream did not name the object's size, sha256")
        if self.size is not None and (size, sha256) != (self.size, self.sha256):
            raise ConflictError(f"{self.where}: the object changed while it was downloaded")
        expected = self.expected
        if expected is not None and (size, sha256) != (expected.size, expected.sha256):
            raise ConflictError(
                f"{self.where}: the control plane serves {size} bytes with sha256 "
                f"{sha256[:12]}..., but the reference names {expected.size} bytes with "
                f"{expected.sha256[:12]}..."
            )
        self.size, self.sha256 = size, sha256

    def _finish(self) -> None:
        if self.size is None:
            raise ConflictError(f"{self.where}: the control plane sent no data")
        if self.received != self.size:
            raise ConflictError(
                f"{self.where}: the stream ended after {self.received} of {self.size} bytes"
            )
        if self.digest.hexdigest() != self.sha256:
            raise ConflictError(
                f"{self.where}: the bytes do not match their sha256 (corrupted on the way); "
                "nothing was written"
            )
