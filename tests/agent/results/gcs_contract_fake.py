"""A small fake of the GCS JSON API, driven by the official client in contract tests.

gcp-storage-emulator ignores ``ifGenerationMatch``, so the create-only commit that makes GCS
puts idempotent under a race cannot be checked against it. This fake implements just what
``GcsStore.put``/``stat`` send, with real GCS semantics for that precondition: object metadata
GET, multipart uploads, and resumable uploads (initiate, ``Content-Range`` chunks, ``308``
until the last one), each answering ``412`` when ``ifGenerationMatch=0`` meets an existing
object (checked when the upload starts and again when it completes, as GCS does).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import threading
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import google_crc32c


class FakeGcs:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], tuple[bytes, dict[str, Any]]] = {}
        self.sessions: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.generation = 1000

    def resource(self, bucket: str, name: str) -> dict[str, Any]:
        return self.objects[(bucket, name)][1]

    def commit(
        self, bucket: str, name: str, data: bytes, metadata: dict[str, Any], if_gen: str | None
    ) -> dict[str, Any] | None:
        with self.lock:
            if if_gen == "0" and (bucket, name) in self.objects:
                return None
            self.generation += 1
            crc = google_crc32c.Checksum(data).digest()
            resource = {
                "kind": "storage#object",
                "bucket": bucket,
                "name": name,
                "size": str(len(data)),
                "generation": str(self.generation),
                "metageneration": "1",
                "updated": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                "md5Hash": base64.b64encode(hashlib.md5(data).digest()).decode(),
                "crc32c": base64.b64encode(crc).decode(),
                "metadata": metadata.get("metadata") or {},
            }
            self.objects[(bucket, name)] = (data, resource)
            return resource


_OBJECT = re.compile(r"^/storage/v1/b/([^/]+)/o/([^?]+)$")
_UPLOAD = re.compile(r"^/upload/storage/v1/b/([^/]+)/o$")


class _Handler(BaseHTTPRequestHandler):
    fake: FakeGcs

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        raw = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _precondition_failed(self) -> None:
        self._send(
            412,
            {
                "error": {
                    "code": 412,
                    "message": "At least one of the pre-conditions you specified did not hold.",
                }
            },
        )

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        match = _OBJECT.match(url.path)
        if not match:
            return self._send(404, {"error": {"code": 404, "message": "no route"}})
        bucket, name = match.group(1), urllib.parse.unquote(match.group(2))
        try:
            self._send(200, self.fake.resource(bucket, name))
        except KeyError:
            self._send(404, {"error": {"code": 404, "message": "No such object"}})

    def do_POST(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        match = _UPLOAD.match(url.path)
        if not match:
            return self._send(404, {"error": {"code": 404, "message": "no route"}})
        bucket = match.group(1)
        if_gen = query.get("ifGenerationMatch")
        body = self._body()
        if query.get("uploadType") == "multipart":
            metadata, data = _split_multipart(self.headers["Content-Type"], body)
            resource = self.fake.commit(bucket, metadata["name"], data, metadata, if_gen)
            return self._precondition_failed() if resource is None else self._send(200, resource)
        metadata = json.loads(body or b"{}")
        name = query.get("name") or metadata["name"]
        if if_gen == "0" and (bucket, name) in self.fake.objects:
            return self._precondition_failed()
        session = f"s{len(self.fake.sessions)}"
        self.fake.sessions[session] = {
            "bucket": bucket,
            "name": name,
            "metadata": metadata,
            "if_gen": if_gen,
            "data": b"",
        }
        host = self.headers["Host"]
        location = f"http://{host}/upload/storage/v1/b/{bucket}/o?uploadType=resumable"
        self._send(200, headers={"Location": f"{location}&upload_id={session}"})

    def do_PUT(self) -> None:
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
        session = self.fake.sessions[query["upload_id"]]
        chunk = self._body()
        declared = re.match(r"bytes (\*|(\d+)-(\d+))/(\*|\d+)", self.headers["Content-Range"])
        assert declared, self.headers["Content-Range"]
        session["data"] += chunk
        total = declared.group(4)
        if total == "*" or len(session["data"]) < int(total):
            end = len(session["data"]) - 1
            return self._send(308, headers={"Range": f"bytes=0-{end}"} if end >= 0 else {})
        resource = self.fake.commit(
            session["bucket"],
            session["name"],
            session["data"],
            session["metadata"],
            session["if_gen"],
        )
        return self._precondition_failed() if resource is None else self._send(200, resource)


def _split_multipart(content_type: str, body: bytes) -> tuple[dict[str, Any], bytes]:
    boundary = re.search(r'boundary="?([^";]+)"?', content_type)
    assert boundary, content_type
    parts = body.split(b"--" + boundary.group(1).encode())
    metadata_part, media_part = parts[1], parts[2]
    metadata = json.loads(metadata_part.split(b"\r\n\r\n", 1)[1].strip())
    media = media_part.split(b"\r\n\r\n", 1)[1]
    return metadata, media[: -len(b"\r\n")] if media.endswith(b"\r\n") else media


@contextlib.contextmanager
def fake_gcs() -> Iterator[tuple[str, FakeGcs]]:
    fake = FakeGcs()
    handler = type("Handler", (_Handler,), {"fake": fake})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", fake
    finally:
        server.shutdown()
        server.server_close()
