"""Bounding a report before it is journaled: nothing the control plane would refuse gets in.

A step's result or error above the agent's limit (``agent.limits``) does not travel: the attempt
fails *permanently* with an error that says how large it was, what the limit is and how to
store it or return a reference instead (an agent with a result store never gets there for a
result: the runner caps the step's inline threshold at ``inline_result_limit``). Log chunks
too large for one frame are split; any other report still too large raises
``ReportTooLarge`` (the runner turns that into an infrastructure failure).
"""

from __future__ import annotations

import dataclasses

from agent.limits import AgentLimits
from agent.reports import AttemptFinished, LogChunk, ReportBody
from providers.base import ErrorInfo

HOW_TO_RETURN_A_REFERENCE = (
    "return a reference instead: write the data to storage the next step can read (a shared "
    "file system, an object store) and return its path or URL"
)


class ReportTooLarge(Exception):
    """A report that cannot be made to fit the control plane's frame."""


def _size(text: str) -> int:
    return len(text.encode("utf-8", errors="surrogatepass"))


# Only reached without a store: with one, the runner lowers the step's inline threshold to
# the inline limit, so a larger result is stored instead (``inline_result_limit``).
HOW_TO_STORE_A_RESULT = (
    "store it instead: name a result store with @step(result_store=...) or configure one on "
    "this agent ([result_stores.NAME] with a default), which keeps results of any size; or "
)


def inline_result_limit(limits: AgentLimits, payload_limit: int) -> int:
    """The largest result (JSON text, bytes) this agent sends inline."""
    return min(limits.max_result_bytes, payload_limit)


def oversize_failure(what: str, size: int, limit: int, detail: str = "") -> AttemptFinished:
    """The permanent failure that replaces an oversize result or error."""
    message = (
        f"the step's {what} is {size} bytes, over this agent's limit of {limit} bytes "
        f"(max_{what}_bytes, capped by the control plane's frame size), so it was not sent; "
        f"{HOW_TO_STORE_A_RESULT if what == 'result' else ''}{HOW_TO_RETURN_A_REFERENCE}"
    )
    if detail:
        message += f". The {what} began: {detail}"
    error = ErrorInfo(
        error_class="permanent",
        type=f"meridian.{what.capitalize()}TooLarge",
        message=message,
    )
    return AttemptFinished(outcome="failed", error=error)


def bound_finished(
    body: AttemptFinished, limits: AgentLimits, payload_limit: int
) -> AttemptFinished:
    """``body`` itself when its result and error fit; otherwise the explained failure."""
    result_limit = inline_result_limit(limits, payload_limit)
    size = _size(body.result_json)
    if size > result_limit:
        failure = oversize_failure("result", size, result_limit)
        return dataclasses.replace(failure, exit_code=body.exit_code)
    if body.error is not None:
        error_limit = min(limits.max_error_bytes, payload_limit)
        e = body.error
        size = sum(_size(t) for t in (e.message, e.traceback, e.type, *e.type_mro))
        if size > error_limit:
            head = f"{e.type}: {e.message[:300]}"
            failure = oversize_failure("error", size, error_limit, head)
            return dataclasses.replace(failure, exit_code=body.exit_code)
    return body


def split_chunk(chunk: LogChunk) -> list[LogChunk]:
    """Two halves of a chunk (a chunk of one line cannot be split)."""
    if len(chunk.lines) < 2:
        raise ReportTooLarge("a single log line is larger than a frame")
    middle = len(chunk.lines) // 2
    return [LogChunk(chunk.lines[:middle]), LogChunk(chunk.lines[middle:])]


def bound_body(body: ReportBody, limits: AgentLimits, payload_limit: int) -> ReportBody:
    if isinstance(body, AttemptFinished):
        return bound_finished(body, limits, payload_limit)
    return body
