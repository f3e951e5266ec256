"""Pure rendering of control-plane data for people (text) and for scripts (JSON).

Everything here takes ``meridian.models`` values and returns strings or plain dicts; no I/O, no
clock reads (``now`` is a parameter), so the audit view can be unit tested from hand-made models.
The audit view answers, for every attempt of every step: where it ran (environment, agent,
provider, resource), when, how it ended and why — and separates failures the run recovered from
the one that ended it.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import groupby
from typing import Any

from meridian import models
from meridian.core.errors import ValidationError
from meridian.core.resultref import ResultRef
from meridian.core.sealing import describe_sealed, mask_sealed

# Display order for state counts; unknown states sort after these, alphabetically.
STEP_STATE_ORDER = ("COMPLETED", "CACHED", "RUNNING", "PENDING", "FAILED", "CANCELLED")
ERROR_WIDTH = 80
TRACEBACK_LINES = 8
# A result is shown on one line, cut at this many characters (the JSON output has all of it).
RESULT_WIDTH = 400


# ---- small formatting primitives -------------------------------------------------------------


def iso(moment: datetime | None) -> str | None:
    """ISO-8601 in UTC with millisecond precision and a ``Z``, or None."""
    if moment is None:
        return None
    text = moment.astimezone(UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def format_datetime(moment: datetime | None) -> str:
    """``2024-05-01 12:00:01 UTC`` or ``-``."""
    if moment is None:
        return "-"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def format_clock(moment: datetime | None) -> str:
    """``12:00:01.234`` (UTC) — compact enough for a timeline column."""
    if moment is None:
        return "-"
    return moment.astimezone(UTC).strftime("%H:%M:%S.%f")[:-3]


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())


def format_seconds(seconds: float | None) -> str:
    """Human duration: ``850ms``, ``4.2s``, ``3m04s``, ``2h05m``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def truncate(text: str, width: int) -> str:
    """One line of at most ``width`` characters, with an ellipsis when cut."""
    line = " ".join(text.split())
    if len(line) <= width:
        return line
    return line[: max(0, width - 1)] + "…"


def short_type(qualified: str) -> str:
    """``builtins.ConnectionError`` -> ``ConnectionError``."""
    return qualified.rsplit(".", 1)[-1]


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces; the last column is never padded."""
    all_rows = [list(headers), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(headers))]
    lines = []
    for row in all_rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


_DIGITS = re.compile(r"(\d+)")


def natural_key(text: str) -> tuple[tuple[int, str, int], ...]:
    """Sort key that orders numbers by value: ``load#2`` before ``load#10``."""
    return tuple(
        (1, "", int(part)) if part.isdigit() else (0, part, 0)
        for part in _DIGITS.split(text)
        if part
    )


def format_result(value: Any, run_id: str, *, label: str = "Result:") -> list[str]:
    """The flow's result on one bounded line; a note says where the rest is when cut."""
    try:
        text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    except ValueError:  # a circular structure: show what repr says
        text = repr(value)
    line = f"{label} {truncate(mask_sealed(text), RESULT_WIDTH)}"
    if len(" ".join(text.split())) <= RESULT_WIDTH:
        return [line]
    return [line, f"  (truncated: {len(text)} characters; all of it: "
                  f"meridian runs show {run_id} --json)"]  # fmt: skip


def sorted_steps(detail: models.RunDetail) -> list[models.StepRunDetail]:
    """The run's steps in the order they were submitted; steps submitted together (a map's
    items share one transaction time) in natural key order: ``#1, #2, #10``, not text order
    (``#1, #10, #2``, how the store breaks the tie)."""
    ordered: list[models.StepRunDetail] = []
    for _, group in groupby(detail.steps, key=lambda s: s.created_at or id(s)):
        ordered += sorted(group, key=lambda s: natural_key(s.key))
    return ordered


def parse_json_text(text: str) -> Any:
    """Decode a stored JSON document; keep the raw text when it is not valid JSON."""
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def format_size(size: int) -> str:
    """``300.0 MiB``: bytes in the largest binary unit that keeps the number above 1."""
    value = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{size} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def parse_ref(text: str) -> ResultRef | None:
    """A step's stored-result reference, or None (none, or not one this version can read)."""
    if not text:
        return None
    try:
        return ResultRef.from_json(text)
    except ValidationError:
        return None


def describe_ref(ref: ResultRef) -> str:
    """``300.0 MiB stored in aws/s3-main (parquet, sha256 1a2b3c4d5e6f…)``."""
    sealed = ", sealed" if ref.sealed else ""
    return (
        f"{format_size(ref.size)} stored in {ref.environment}/{ref.store} "
        f"({ref.serializer}{sealed}, sha256 {ref.sha256[:12]}…)"
    )


def ref_to_dict(text: str) -> dict[str, Any] | None:
    """A stored result's reference for JSON output (its fields; no bytes)."""
    ref = parse_ref(text)
    return ref.to_value() if ref is not None else None


def stored_value(text: str) -> Any:
    """A stored result for display: a sealed one as ``{"sealed": {key_group, sha256, bytes}}``
    (the digest is the one the audit records keep)."""
    sealed = describe_sealed(text)
    return {"sealed": sealed} if sealed is not None else parse_json_text(text)


# ---- the audit summary -----------------------------------------------------------------------


@dataclass(frozen=True)
class FailureView:
    """One failure as the summary shows it."""

    step_key: str
    attempt: int | None
    error_class: str
    error_type: str
    message: str
    traceback: str = ""
    at: datetime | None = None  # when it happened (the attempt's or step's end)

    def to_dict(self) -> dict[str, Any]:
        return {
            "step_key": self.step_key,
            "attempt": self.attempt,
            "at": iso(self.at),
            "error_class": self.error_class,
            "error_type": self.error_type,
            "message": self.message,
            "traceback": self.traceback,
        }


@dataclass(frozen=True)
class AuditSummary:
    """Step counts plus failures split by what they did to the run."""

    step_counts: dict[str, int]
    recovered: tuple[FailureView, ...]
    # Steps that failed for good but did not end the run: the flow body caught them, or they
    # failed after (or alongside) the failure that did.
    other: tuple[FailureView, ...]
    final_failure: FailureView | None


def _failure(
    step_key: str, attempt: int | None, error: models.ErrorInfo, at: datetime | None = None
) -> FailureView:
    return FailureView(
        step_key=step_key,
        attempt=attempt,
        error_class=error.error_class,
        error_type=error.type,
        message=mask_sealed(error.message),
        traceback=mask_sealed(error.traceback),
        at=at,
    )


def attempt_marks(detail: models.RunDetail) -> dict[str, tuple[str, ...]]:
    """Attempt id -> how its failure counts: "lost-agent" (its agent went silent), and
    "recovered" (retried, then the step succeeded) or "final" (it ended the goal)."""
    final = summarize(detail).final_failure
    marks: dict[str, tuple[str, ...]] = {}
    for step in detail.steps:
        for attempt in step.attempts:
            if attempt.error is None or attempt.state == "SUCCEEDED":
                continue
            found = ["lost-agent"] if attempt.error.error_class == "lost_agent" else []
            if step.state == "COMPLETED":
                found.append("recovered")
            elif final is not None and (final.step_key, final.attempt) == (
                step.key,
                attempt.number,
            ):
                found.append("final")
            if found:
                marks[attempt.attempt_id] = tuple(found)
    return marks


def _final_step_error(step: models.StepRunDetail) -> tuple[int | None, models.ErrorInfo | None]:
    """The error that ended a failed step: its own, else its last failed attempt's."""
    last_failed = [a for a in step.attempts if a.error is not None]
    number = last_failed[-1].number if last_failed else None
    if step.error is not None:
        return number, step.error
    return number, (last_failed[-1].error if last_failed else None)


def _sort_moment(moment: datetime | None) -> datetime:
    return moment if moment is not None else datetime.max.replace(tzinfo=UTC)


def summarize(detail: models.RunDetail) -> AuditSummary:
    """Classify every failure of a run.

    *Recovered*: a failed attempt of a step that later COMPLETED. *Final*: when the run did not
    complete, the earliest step that failed for good (by end time), or the run's own error when
    the flow body failed outside any step. Every other step that failed for good is *other*
    (e.g. caught by the flow body in a run that still completed).
    """
    counts = Counter(step.state for step in detail.steps)
    recovered: list[FailureView] = []
    for step in detail.steps:
        if step.state != "COMPLETED":
            continue
        for attempt in step.attempts:
            if attempt.error is not None and attempt.state != "SUCCEEDED":
                recovered.append(
                    _failure(step.key, attempt.number, attempt.error, attempt.ended_at)
                )

    failed_steps = sorted(
        (s for s in detail.steps if s.state == "FAILED"), key=lambda s: _sort_moment(s.ended_at)
    )
    step_failures: list[FailureView] = []
    for step in failed_steps:
        number, error = _final_step_error(step)
        if error is not None:
            step_failures.append(_failure(step.key, number, error, step.ended_at))
        else:
            step_failures.append(
                FailureView(step.key, number, "", "", "failed without details", at=step.ended_at)
            )

    final: FailureView | None = None
    other = step_failures
    if detail.state != "COMPLETED" and step_failures:
        final, other = step_failures[0], step_failures[1:]
    elif detail.state != "COMPLETED" and detail.error is not None:
        final = _failure("(flow body)", None, detail.error, detail.ended_at)
    ordered = {s: counts[s] for s in STEP_STATE_ORDER if counts[s]}
    ordered.update({s: counts[s] for s in sorted(counts) if s not in ordered})
    return AuditSummary(ordered, tuple(recovered), tuple(other), final)


# ---- the audit view: text --------------------------------------------------------------------


def _error_cell(error: models.ErrorInfo | None, marks: tuple[str, ...] = ()) -> str:
    if error is None:
        return ""
    text = f"{error.error_class}: {short_type(error.type)}: {mask_sealed(error.message)}"
    return truncate(f"[{', '.join(marks)}] {text}" if marks else text, ERROR_WIDTH)


def _timeline_rows(detail: models.RunDetail) -> list[list[str]]:
    rows: list[list[str]] = []
    marks = attempt_marks(detail)
    for step in sorted_steps(detail):
        if not step.attempts:
            # CACHED or never-scheduled steps still belong on the timeline.
            where = ["-", "-", "-", step.provider or "-", "-"]  # attempt..resource
            when = ["-", format_clock(step.ended_at), "-"]  # start, end, duration
            note = _error_cell(step.error) or _reused_cell(step)
            rows.append([step.key, *where, *when, step.state, note])
        for a in step.attempts:
            rows.append(
                [
                    step.key,
                    str(a.number),
                    a.environment or "-",
                    a.agent_name or "-",
                    a.provider or step.provider or "-",
                    truncate(a.resource_id, 28) if a.resource_id else "-",
                    format_clock(a.started_at),
                    format_clock(a.ended_at),
                    format_seconds(seconds_between(a.started_at, a.ended_at)),
                    a.state,
                    _error_cell(a.error, marks.get(a.attempt_id, ())),
                ]
            )
    return rows


def _reused_cell(step: models.StepRunDetail) -> str:
    """Where a CACHED step's result came from (caching across runs)."""
    if not step.reused_from_run_id:
        return ""
    return truncate(
        f"reused from run {step.reused_from_run_id} ({step.reused_from_step_key})", ERROR_WIDTH
    )


TIMELINE_HEADERS = (
    *("STEP", "#", "ENVIRONMENT", "AGENT", "PROVIDER", "RESOURCE"),
    *("START", "END", "DURATION", "STATE", "ERROR"),
)


def _failure_lines(failure: FailureView, *, with_traceback: bool) -> list[str]:
    where = failure.step_key
    if failure.attempt is not None:
        where += f" attempt {failure.attempt}"
    lines = [
        f"  {where}: [{failure.error_class or '?'}] {failure.error_type or '?'}: "
        f"{truncate(failure.message, 200)}"
    ]
    if with_traceback and failure.traceback.strip():
        tb = failure.traceback.rstrip().splitlines()
        lines.extend(f"    {line}" for line in tb[:TRACEBACK_LINES])
        if len(tb) > TRACEBACK_LINES:
            lines.append(f"    ... ({len(tb) - TRACEBACK_LINES} more lines)")
    return lines


def _header_lines(detail: models.RunDetail) -> list[str]:
    params = parse_json_text(detail.parameters_json)
    duration = seconds_between(detail.started_at or detail.created_at, detail.ended_at)
    return [
        f"Run         {detail.flow_run_id}",
        f"Flow        {detail.flow_name}",
        f"Entrypoint  {detail.entrypoint}",
        f"Trigger     {detail.trigger}"
        + (f" (retry of {detail.retry_of})" if detail.retry_of else "")
        + (f", resumed {format_datetime(detail.resumed_at)}" if detail.resumed_at else ""),
        *(
            [f"Parent      {detail.parent_run_id} (subflow {detail.parent_key})"]
            if detail.parent_run_id
            else []
        ),
        f"Parameters  {json.dumps(params, sort_keys=True) if params is not None else '{}'}",
        f"Code        sha256:{detail.bundle_sha256}" if detail.bundle_sha256 else "Code        -",
        f"State       {detail.state}",
        *([f"Waiting     {detail.waiting_for}"] if detail.waiting_for else []),
        f"Created     {format_datetime(detail.created_at)}",
        f"Ended       {format_datetime(detail.ended_at)}  (took {format_seconds(duration)})",
        *_result_lines(detail),
    ]


def _result_lines(detail: models.RunDetail) -> list[str]:
    if not detail.result_json:
        return ["Result      -"]
    return format_result(stored_value(detail.result_json), detail.flow_run_id, label="Result     ")


APPROVAL_HEADERS = ("APPROVAL", "STATE", "REQUESTED", "DECIDED", "BY", "REASON / MESSAGE")


def _approval_lines(detail: models.RunDetail) -> list[str]:
    """The run's approvals: who decided what and why; how to decide the pending ones."""
    if not detail.approvals:
        return []
    rows = []
    for a in detail.approvals:
        decided = format_datetime(a.decided_at)
        if a.state == "pending" and a.deadline is not None:
            decided = f"(times out {format_datetime(a.deadline)})"
        text = a.reason if a.decided else a.message
        rows.append(
            [a.key, a.state, format_datetime(a.requested_at), decided, a.decided_by or "-",
             truncate(text, ERROR_WIDTH) or "-"]
        )  # fmt: skip
    lines = ["", "Approvals", table(APPROVAL_HEADERS, rows)]
    if any(a.state == "pending" for a in detail.approvals):
        lines.append(
            f"  decide: meridian runs approve {detail.flow_run_id} KEY [--reason TEXT]"
            f" | meridian runs reject {detail.flow_run_id} KEY --reason TEXT"
        )
    return lines


def _children_lines(detail: models.RunDetail) -> list[str]:
    """Subflows the run started (child runs), oldest first."""
    if not detail.children:
        return []
    rows = [
        [c.flow_run_id, c.flow_name, c.state, format_datetime(c.created_at)]
        for c in detail.children
    ]
    return ["", "Subflows", table(("RUN", "FLOW", "STATE", "CREATED"), rows)]


def render_run(detail: models.RunDetail, pending: Sequence[str] = ()) -> str:
    """The full audit view of one run as text; ``pending``: what the run waits for, shown
    right under the header."""
    summary = summarize(detail)
    lines = _header_lines(detail) + list(pending)
    lines += ["", "Timeline (times UTC)"]
    rows = _timeline_rows(detail)
    lines.append(table(TIMELINE_HEADERS, rows) if rows else "  (no steps)")
    lines += _approval_lines(detail) + _children_lines(detail)
    counts = ", ".join(f"{n} {state}" for state, n in summary.step_counts.items()) or "none"
    lines += ["", f"Steps: {counts}", "", "Recovered failures:"]
    if summary.recovered:
        for failure in summary.recovered:
            lines += _failure_lines(failure, with_traceback=False)
    else:
        lines.append("  none")
    lines += ["", "Failure that ended the run:"]
    if summary.final_failure is not None:
        if summary.final_failure.at is not None:
            lines.append(
                f"  first moment of true failure: {format_datetime(summary.final_failure.at)}"
            )
        lines += _failure_lines(summary.final_failure, with_traceback=True)
    else:
        lines.append("  none")
    if summary.other:
        lines += ["", "Other failed steps:"]
        for failure in summary.other:
            lines += _failure_lines(failure, with_traceback=False)
    return "\n".join(lines + _stored_lines(detail) + _crossed_lines(detail) + _sealed_lines(detail))


def _stored_lines(detail: models.RunDetail) -> list[str]:
    """The results that stayed at their site: where each is and how big (never its bytes);
    ``meridian results get`` fetches one."""
    lines = []
    for step in sorted_steps(detail):
        ref = parse_ref(step.result_ref_json)
        if ref is not None:
            lines.append(f"  {step.key}: result: {describe_ref(ref)}")
    if not lines:
        return []
    header = "Stored results (kept at their site; `meridian results get RUN STEP` fetches one):"
    return ["", header, *lines]


def _crossed_lines(detail: models.RunDetail) -> list[str]:
    """Stored results relayed between environments for this run: bytes per step and
    (from, to), counting completed transfers (failed ones are only counted)."""
    sums: dict[tuple[str, str, str], list[int]] = {}
    for t in detail.transfers:
        totals = sums.setdefault((t.step_key, t.from_environment, t.to_environment), [0, 0, 0])
        if t.state == "COMPLETED":
            totals[0] += t.bytes
            totals[1] += 1
        elif t.state == "FAILED":
            totals[2] += 1
    if not sums:
        return []
    lines = ["", "Crossed environments (stored results relayed between sites):"]
    for (step, source, target), (sent, done, failed) in sorted(sums.items()):
        note = f", {failed} failed" if failed else ""
        plural = "" if done == 1 else "s"
        lines.append(
            f"  {step or '(download)'}: {source} -> {target or '(client)'}  "
            f"{format_size(sent)} in {done} transfer{plural}{note}"
        )
    return lines


def _sealed_lines(detail: models.RunDetail) -> list[str]:
    """Which results are sealed, by key group: only runners and agents holding it read them."""
    groups: dict[str, list[str]] = {}
    for step in detail.steps:
        sealed = describe_sealed(step.result_json)
        if sealed is not None:
            groups.setdefault(sealed["key_group"], []).append(step.key)
    run_sealed = describe_sealed(detail.result_json)
    if run_sealed is not None:
        groups.setdefault(run_sealed["key_group"], []).append("(flow result)")
    if not groups:
        return []
    lines = ["", "Sealed results (readable only where the key group's key is held):"]
    lines += [f"  {group}: {', '.join(keys)}" for group, keys in sorted(groups.items())]
    return lines


# ---- the audit view: JSON --------------------------------------------------------------------


def error_to_dict(error: models.ErrorInfo | None) -> dict[str, Any] | None:
    if error is None:
        return None
    return {
        "error_class": error.error_class,
        "type": error.type,
        "message": mask_sealed(error.message),
        "traceback": mask_sealed(error.traceback),
    }


def _attempt_to_dict(a: models.AttemptDetail, marks: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "marks": list(marks),
        "attempt_id": a.attempt_id,
        "number": a.number,
        "state": a.state,
        "environment": a.environment,
        "agent_id": a.agent_id,
        "agent_name": a.agent_name,
        "provider": a.provider,
        "resource_id": a.resource_id,
        "queued_at": iso(a.queued_at),
        "started_at": iso(a.started_at),
        "ended_at": iso(a.ended_at),
        "duration_s": seconds_between(a.started_at, a.ended_at),
        "exit_code": a.exit_code,
        "recovered": a.recovered,
        "error": error_to_dict(a.error),
    }


def _step_to_dict(step: models.StepRunDetail, marks: dict[str, tuple[str, ...]]) -> dict[str, Any]:
    return {
        "step_run_id": step.step_run_id,
        "key": step.key,
        "name": step.name,
        "state": step.state,
        "target": step.target,
        "provider": step.provider,
        "inputs_digest": step.inputs_digest,
        "result": stored_value(step.result_json),
        "result_ref": ref_to_dict(step.result_ref_json),
        "created_at": iso(step.created_at),
        "ended_at": iso(step.ended_at),
        "error": error_to_dict(step.error),
        "attempts": [_attempt_to_dict(a, marks.get(a.attempt_id, ())) for a in step.attempts],
        "reused_from": (
            {"flow_run_id": step.reused_from_run_id, "step_key": step.reused_from_step_key}
            if step.reused_from_run_id
            else None
        ),
    }


def approval_to_dict(approval: models.ApprovalInfo) -> dict[str, Any]:
    return {
        "key": approval.key,
        "state": approval.state,
        "message": approval.message,
        "requested_at": iso(approval.requested_at),
        "deadline": iso(approval.deadline),
        "decided_at": iso(approval.decided_at),
        "decided_by": approval.decided_by or None,
        "reason": approval.reason,
    }


def transfer_to_dict(t: models.TransferInfo) -> dict[str, Any]:
    """One result transfer for JSON output (``runs show --json``, ``transfers --json``)."""
    return {
        "transfer_id": t.transfer_id,
        "flow_run_id": t.flow_run_id,
        "step_key": t.step_key,
        "attempt_id": t.attempt_id or None,
        "from_environment": t.from_environment,
        "to_environment": t.to_environment,
        "store": t.store,
        "bytes": t.bytes,
        "sha256": t.sha256,
        "state": t.state,
        "error": t.error or None,
        "started_at": iso(t.started_at),
        "ended_at": iso(t.ended_at),
        "producer_run_id": t.producer_run_id,
        "producer_step_key": t.producer_step_key,
        "method": t.method,
    }


def run_to_dict(detail: models.RunDetail) -> dict[str, Any]:
    """The audit view as one JSON-ready document with stable keys."""
    summary = summarize(detail)
    final = summary.final_failure
    marks = attempt_marks(detail)
    return {
        "flow_run_id": detail.flow_run_id,
        "flow_name": detail.flow_name,
        "entrypoint": detail.entrypoint,
        "trigger": detail.trigger,
        "retry_of": detail.retry_of or None,
        "resumed_at": iso(detail.resumed_at),
        "parent_run_id": detail.parent_run_id or None,
        "parent_key": detail.parent_key or None,
        "children": [
            {"flow_run_id": c.flow_run_id, "flow_name": c.flow_name, "state": c.state}
            for c in detail.children
        ],
        "parameters": parse_json_text(detail.parameters_json) or {},
        "bundle_sha256": detail.bundle_sha256,
        "state": detail.state,
        "created_at": iso(detail.created_at),
        "started_at": iso(detail.started_at),
        "ended_at": iso(detail.ended_at),
        "result": stored_value(detail.result_json),
        "error": error_to_dict(detail.error),
        "steps": [_step_to_dict(s, marks) for s in sorted_steps(detail)],
        "approvals": [approval_to_dict(a) for a in detail.approvals],
        "transfers": [transfer_to_dict(t) for t in detail.transfers],
        "summary": {
            "step_counts": summary.step_counts,
            "recovered_failures": [f.to_dict() for f in summary.recovered],
            "final_failure": final.to_dict() if final is not None else None,
            "other_failures": [f.to_dict() for f in summary.other],
        },
    }


def to_json(document: Any) -> str:
    """Stable, readable JSON for ``--json`` outputs."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False)
