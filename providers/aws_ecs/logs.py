"""Reading an ECS task's output back from its awslogs stream in CloudWatch Logs.

Two readers: ``read_result_marker`` looks backwards for the step's outcome line once the task
stopped; ``EventPages`` follows the stream forwards for ``logs`` (see
``providers.shared.logfollow.follow_pages``).
"""

from __future__ import annotations

import json
from typing import Any

from providers.aws_ecs.client import AwsApiError, call
from providers.base import LogRecord, Outcome
from providers.shared.outcome import RESULT_MARKER, parse_result_marker

MAX_MARKER_PAGES = 20  # pages of up to 1 MB / 10,000 events read backwards for the marker
MAX_JOINED_EVENTS = 64  # 16 KiB pieces: an outcome of up to ~1 MiB is reassembled


class EventPages:
    """Reads a log stream forwards from its head, one ``GetLogEvents`` page per ``read``."""

    def __init__(self, client: Any, group: str, stream: str) -> None:
        self.client = client
        self.group = group
        self.stream = stream
        self.saw_marker = False  # the step's outcome line went by: its output is complete
        self._token: str | None = None

    async def read(self) -> list[LogRecord]:
        """The events delivered since the last read; none while the stream does not exist."""
        kwargs: dict[str, Any] = {
            "logGroupName": self.group,
            "logStreamName": self.stream,
            "startFromHead": True,
        }
        if self._token:
            kwargs["nextToken"] = self._token
        try:
            page = await call(self.client, "get_log_events", **kwargs)
        except AwsApiError as exc:
            if exc.code != "ResourceNotFoundException":  # not yet created: keep waiting
                raise
            page = {}
        self._token = page.get("nextForwardToken") or self._token
        records = []
        for event in page.get("events") or []:
            text = str(event.get("message", "")).rstrip("\n")
            self.saw_marker = self.saw_marker or RESULT_MARKER in text
            records.append(LogRecord("stdout", text, int(event.get("timestamp", 0))))
        return records


async def read_result_marker(client: Any, group: str, stream: str) -> Outcome | None:
    """The step's outcome from the last ``::meridian-outcome::`` line of a CloudWatch stream.

    Reads backwards from the end (the marker is the step's last line), at most
    ``MAX_MARKER_PAGES`` pages. Docker splits lines longer than 16 KiB into several log events,
    so a marker whose JSON is incomplete is joined with the events that follow it.
    None when the stream does not exist or holds no marker.
    """
    newer: list[str] = []  # chronological messages after the page being read
    token: str | None = None
    for _ in range(MAX_MARKER_PAGES):
        kwargs: dict[str, Any] = {
            "logGroupName": group,
            "logStreamName": stream,
            "startFromHead": False,
        }
        if token:
            kwargs["nextToken"] = token
        try:
            page = await call(client, "get_log_events", **kwargs)
        except AwsApiError as exc:
            if exc.code == "ResourceNotFoundException":
                return None
            raise
        messages = [str(e.get("message", "")) for e in page.get("events") or []]
        for i in range(len(messages) - 1, -1, -1):
            if RESULT_MARKER in messages[i]:
                return _joined_marker(messages[i:] + newer)
        next_token = page.get("nextBackwardToken")
        if not messages or not next_token or next_token == token:
            return None
        newer = (messages + newer)[:MAX_JOINED_EVENTS]
        token = str(next_token)
    return None


def _joined_marker(messages: list[str]) -> Outcome | None:
    text = messages[0][messages[0].rfind(RESULT_MARKER) :]
    for extra in messages[1:MAX_JOINED_EVENTS]:
        try:
            json.loads(text[len(RESULT_MARKER) :])
            break
        except ValueError:
            text += extra
    return parse_result_marker(text)
