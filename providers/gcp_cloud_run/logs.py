"""Reading a Cloud Run job execution's output back from Cloud Logging.

Cloud Run jobs keep no output of their own: a container's stdout and stderr go to Cloud Logging
(``run.googleapis.com/stdout`` and ``run.googleapis.com/stderr``). The ``gcp-cloud-run``
provider reads them through the small ``LogSource`` protocol below so that tests can feed lines
without Google, and so that a deployment can plug in another reader (a log sink, BigQuery, ...).

``CloudLoggingSource`` is the production reader. It calls the Cloud Logging v2 REST method
``entries:list`` through ``google.auth``'s ``AuthorizedSession`` (``requests``), so it needs no
extra client library; it runs the blocking calls in a worker thread. Cloud Logging ingests with
a delay of seconds, which is why the provider keeps reading for ``log_settle_s`` after an
execution ends.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from providers.base import ProviderError

LOGGING_ENDPOINT = "https://logging.googleapis.com"
_SCOPES = ("https://www.googleapis.com/auth/logging.read",)
_EXECUTION_NAME = re.compile(
    r"^projects/(?P<project>[^/]+)/locations/[^/]+/jobs/(?P<job>[^/]+)/executions/(?P<ex>[^/]+)$"
)
_PAGE_SIZE = 1000
_MAX_PAGES = 20  # bounded work per read: 20 000 lines; the next read continues from the cursor


@dataclass(frozen=True)
class LogEntry:
    """One output line and the opaque position after it (pass it back as ``after``)."""

    stream: Literal["stdout", "stderr"]
    text: str
    at_unix_ms: int
    cursor: str


class LogSource(Protocol):
    """Where the output lines of a Cloud Run execution can be read."""

    async def read(self, execution: str, after: str | None) -> Sequence[LogEntry]:
        """The lines of ``execution`` (its full resource name) after cursor ``after``, in order."""
        ...


def split_execution_name(name: str) -> tuple[str, str, str]:
    """(project, job, execution id) of ``projects/P/locations/R/jobs/J/executions/E``."""
    match = _EXECUTION_NAME.match(name)
    if match is None:
        raise ProviderError(f"not a Cloud Run execution name: {name!r}")
    return match["project"], match["job"], match["ex"]


def parse_timestamp_ns(text: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 timestamp (Cloud Logging keeps nanoseconds)."""
    match = re.fullmatch(r"(.{19})(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)", text.strip())
    if match is None:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    zone = "+00:00" if match[3] == "Z" else match[3]
    seconds = dt.datetime.fromisoformat(match[1] + zone).timestamp()
    return int(seconds) * 1_000_000_000 + int((match[2] or "0").ljust(9, "0"))


def format_timestamp_ns(ns: int) -> str:
    seconds, frac = divmod(ns, 1_000_000_000)
    base = dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{frac:09d}Z"


def _cursor(ns: int, insert_id: str) -> str:
    return f"{ns}:{insert_id}"


def _parse_cursor(cursor: str) -> tuple[int, str]:
    ns, _, insert_id = cursor.partition(":")
    return int(ns), insert_id


class CloudLoggingSource:
    """Reads execution output with the Cloud Logging REST API (``entries:list``).

    Needs ``roles/logging.viewer`` (``logging.logEntries.list``) on the job's project.
    ``credentials`` default to application default credentials; ``endpoint`` is injectable.
    """

    def __init__(self, credentials: Any = None, endpoint: str = LOGGING_ENDPOINT) -> None:
        try:
            import google.auth
            import google.auth.exceptions
            from google.auth.transport.requests import AuthorizedSession
        except ImportError as exc:  # google-auth without its requests transport
            raise ProviderError(
                "reading Cloud Run output needs google-auth with requests: "
                f"install meridian-orchestrator[gcp] and requests ({exc})"
            ) from exc
        if credentials is None:
            try:
                credentials, _ = google.auth.default(scopes=_SCOPES)
            except google.auth.exceptions.DefaultCredentialsError as exc:
                raise ProviderError(
                    f"cannot read Cloud Run output from Cloud Logging: {exc} "
                    "(configure application default credentials or pass a 'log_source')"
                ) from exc
        self._session = AuthorizedSession(credentials)
        self._url = endpoint.rstrip("/") + "/v2/entries:list"

    async def read(self, execution: str, after: str | None) -> Sequence[LogEntry]:
        return await asyncio.to_thread(self._read, execution, after)

    def _filter(self, execution: str, after: str | None) -> tuple[str, str]:
        project, job, ex = split_execution_name(execution)
        logs = " OR ".join(
            f'logName="projects/{project}/logs/run.googleapis.com%2F{stream}"'
            for stream in ("stdout", "stderr")
        )
        parts = [
            'resource.type="cloud_run_job"',
            f'resource.labels.job_name="{job}"',
            f'labels."run.googleapis.com/execution_name"="{ex}"',
            f"({logs})",
        ]
        if after is not None:
            # >= and not >: lines written in the same nanosecond are told apart by insertId.
            parts.append(f'timestamp>="{format_timestamp_ns(_parse_cursor(after)[0])}"')
        return project, " AND ".join(parts)

    def _read(self, execution: str, after: str | None) -> list[LogEntry]:
        project, filter_ = self._filter(execution, after)
        last = _parse_cursor(after) if after is not None else None
        body: dict[str, Any] = {
            "resourceNames": [f"projects/{project}"],
            "filter": filter_,
            "orderBy": "timestamp asc",
            "pageSize": _PAGE_SIZE,
        }
        entries: list[LogEntry] = []
        for _ in range(_MAX_PAGES):
            response = self._session.post(self._url, json=body, timeout=30)
            if response.status_code != 200:
                raise ProviderError(
                    f"Cloud Logging entries:list failed ({response.status_code}): "
                    f"{response.text[:2000]}"
                )
            page = response.json()
            for raw in page.get("entries", []):
                entry = _entry(raw)
                if last is None or _parse_cursor(entry.cursor) > last:
                    entries.append(entry)
            if not page.get("nextPageToken"):
                break
            body["pageToken"] = page["nextPageToken"]
        return entries


def _entry(raw: dict[str, Any]) -> LogEntry:
    ns = parse_timestamp_ns(str(raw.get("timestamp") or raw.get("receiveTimestamp")))
    text = raw.get("textPayload")
    if text is None:  # structured logging: the line is the jsonPayload's message
        payload = raw.get("jsonPayload") or {}
        text = payload.get("message", "")
    stream: Literal["stdout", "stderr"] = (
        "stderr" if str(raw.get("logName", "")).endswith("%2Fstderr") else "stdout"
    )
    return LogEntry(
        stream=stream,
        text=str(text).removesuffix("\n"),
        at_unix_ms=ns // 1_000_000,
        cursor=_cursor(ns, str(raw.get("insertId", ""))),
    )
