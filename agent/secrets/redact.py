"""Scrubbing resolved secret values out of text the agent ships: pure functions, no I/O.

A ``Redactor`` is built once per attempt from the values that attempt resolved. It replaces
each value, and the forms a value commonly takes when a program prints it (JSON/``repr``
escaping, URL encoding, base64, each line of a multi-line value), with ``***``.

Limits, on purpose: values shorter than ``MIN_REDACT_CHARS`` are not redacted (a 3-character
value would turn ordinary words and numbers into ``***`` and make logs useless, while
revealing little); a value split across two log lines, or transformed in any other way
(hashed, reversed, encrypted, re-encoded inside a larger base64 blob), is not recognised.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

from agent.reports import AttemptFinished, HandleRecorded, LogChunk, LogLine, ReportBody

MASK = "***"
MIN_REDACT_CHARS = 4


def encodings(value: str) -> set[str]:
    """The forms of ``value`` that are scrubbed, each at least ``MIN_REDACT_CHARS`` long."""
    if len(value) < MIN_REDACT_CHARS:
        # Its encodings may be longer, but masking them alone would still hint at the value.
        return set()
    forms = {
        value,
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
        quote(value, safe=""),
        quote_plus(value),
    }
    raw = value.encode("utf-8")
    forms |= {base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()}
    # Unpadded base64 too: JWTs and many libraries strip the '='.
    forms |= {form.rstrip("=") for form in list(forms) if form.endswith("=")}
    # Log lines are split on newlines, so a PEM key or other multi-line value can only ever
    # appear one line at a time.
    forms |= {line.strip() for line in value.splitlines()}
    return {form for form in forms if len(form) >= MIN_REDACT_CHARS}


@dataclasses.dataclass(frozen=True)
class Redactor:
    """Replaces every known form of the attempt's secret values with ``***``."""

    pattern: re.Pattern[str] | None = None

    @classmethod
    def for_values(cls, values: Iterable[str]) -> Redactor:
        forms: set[str] = set()
        for value in values:
            forms |= encodings(value)
        if not forms:
            return cls()
        # Longest first: when one value contains another, the whole longer one is masked
        # rather than leaving its remainder visible around a masked shorter one.
        ordered = sorted(forms, key=lambda form: (-len(form), form))
        return cls(re.compile("|".join(re.escape(form) for form in ordered)))

    @property
    def active(self) -> bool:
        return self.pattern is not None

    def scrub(self, text: str) -> str:
        if self.pattern is None or not text:
            return text
        return self.pattern.sub(MASK, text)


def redact_report(body: ReportBody, redactor: Redactor) -> ReportBody:
    """``body`` with every text field that reaches the control plane scrubbed.

    ``result_json`` is left alone: it is the value the step chose to return, and masking inside
    JSON could break it (a numeric secret inside a number); docs/secrets.md says so.
    """
    if not redactor.active:
        return body
    scrub = redactor.scrub
    if isinstance(body, LogChunk):
        lines = tuple(LogLine(ln.at_unix_ms, ln.stream, scrub(ln.text)) for ln in body.lines)
        return LogChunk(lines)
    if isinstance(body, AttemptFinished) and body.error is not None:
        error = dataclasses.replace(
            body.error, message=scrub(body.error.message), traceback=scrub(body.error.traceback)
        )
        return dataclasses.replace(body, error=error)
    if isinstance(body, HandleRecorded):
        # The agent keeps the real handle locally for recovery; only the copy sent is scrubbed.
        return HandleRecorded(scrub(body.handle_json), scrub(body.resource_id))
    return body
