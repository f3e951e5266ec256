"""The cross-cloud timeline of a run: one lane per environment and agent, each attempt a bar.

``build`` is pure (a run view and a time in, a ``Timeline`` out) and marks what an auditor
looks for: failed attempts that were retried, failures the step recovered from, and the first
moment of *true* failure (the earliest failed attempt whose step did not recover). ``render``
draws it as SVG: positions are SVG attributes, not inline styles, so the strict CSP holds.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from control_plane.web.html import Markup, esc, span_text, tag

FAILED = frozenset({"FAILED", "LOST", "TIMED_OUT"})
APPROVALS_LANE = ("approvals", "people")
LABEL_W, WIDTH, LANE_H, AXIS_H = 230, 1000, 30, 24


@dataclass(frozen=True)
class Bar:
    step_key: str
    attempt: int
    state: str
    queued: dt.datetime
    start: dt.datetime
    end: dt.datetime
    marks: tuple[str, ...] = ()  # retried · recovered · first-failure · approval

    @property
    def css(self) -> str:
        return " ".join(("bar", self.state.lower().replace("_", "-"), *self.marks))


@dataclass(frozen=True)
class Lane:
    environment: str
    agent: str
    bars: list[Bar] = field(default_factory=list)


@dataclass(frozen=True)
class Timeline:
    start: dt.datetime
    end: dt.datetime
    lanes: list[Lane]
    first_failure: dt.datetime | None


def build(view: Any, now: dt.datetime) -> Timeline:
    """``view``: a ``store.queries.RunView`` (run, steps, attempts by step id, agent names)."""
    steps = {s.id: s for s in view.steps}
    lanes: dict[tuple[str, str], Lane] = {}
    first_failure: dt.datetime | None = None
    for step_id, attempts in view.attempts.items():
        step = steps.get(step_id)
        step_state = str(step.state) if step else ""
        for a in attempts:
            marks = _marks(a, attempts, step_state)
            end = a.ended_at or now
            if "first-failure" in marks and (first_failure is None or end < first_failure):
                first_failure = end
            key = (a.environment or "unassigned", view.agent_names.get(a.agent_id or "", "—"))
            lane = lanes.setdefault(key, Lane(*key))
            start = a.started_at or a.ended_at or now
            lane.bars.append(
                Bar(
                    step.key if step else "?",
                    a.number,
                    str(a.state),
                    a.queued_at,
                    start,
                    end,
                    marks,
                )
            )
    for approval in view.approvals:
        lane = lanes.setdefault(APPROVALS_LANE, Lane(*APPROVALS_LANE))
        end = approval.decided_at or now
        lane.bars.append(
            Bar(
                approval.key,
                0,
                str(approval.state),
                approval.requested_at,
                approval.requested_at,
                end,
                ("approval",),
            )
        )
    first = _first_failure_only(lanes, first_failure)
    ordered = sorted(
        lanes.values(),
        key=lambda lane: (lane.environment == "approvals", lane.environment, lane.agent),
    )
    run_end = view.run.ended_at or now
    ends = [b.end for lane in ordered for b in lane.bars]
    return Timeline(view.run.created_at, max([run_end, *ends]), ordered, first)


def _marks(a: Any, attempts: Sequence[Any], step_state: str) -> tuple[str, ...]:
    if str(a.state) not in FAILED:
        return ()
    later = any(other.number > a.number for other in attempts)
    marks = []
    if later:
        marks.append("retried")
    if step_state in ("COMPLETED", "CACHED"):
        marks.append("recovered")
    elif step_state == "FAILED" and not later:
        marks.append("first-failure")  # the attempt that ended the step: true failure
    return tuple(marks)


def _first_failure_only(
    lanes: Mapping[tuple[str, str], Lane], first: dt.datetime | None
) -> dt.datetime | None:
    """Keep the ``first-failure`` mark on the earliest one only; later ones are consequences."""
    if first is None:
        return None
    for lane in lanes.values():
        for i, bar in enumerate(lane.bars):
            if "first-failure" in bar.marks and bar.end != first:
                lane.bars[i] = Bar(
                    bar.step_key,
                    bar.attempt,
                    bar.state,
                    bar.queued,
                    bar.start,
                    bar.end,
                    (*tuple(m for m in bar.marks if m != "first-failure"), "failure"),
                )
    return first


def render(timeline: Timeline) -> Markup:
    span = max((timeline.end - timeline.start).total_seconds(), 0.001)
    inner = WIDTH - LABEL_W - 10

    def x(at: dt.datetime) -> float:
        return LABEL_W + inner * max(0.0, (at - timeline.start).total_seconds()) / span

    height = AXIS_H + LANE_H * max(1, len(timeline.lanes)) + 6
    parts: list[Markup] = [_axis(span, inner)]
    for i, lane in enumerate(timeline.lanes):
        y = AXIS_H + i * LANE_H
        parts.append(
            tag("text", f"{lane.environment} · {lane.agent}", x=4, y=y + 19, class_="lane-label")
        )
        parts.append(
            tag("line", x1=LABEL_W, x2=WIDTH - 10, y1=y + LANE_H, y2=y + LANE_H, class_="lane-rule")
        )
        for bar in lane.bars:
            if bar.start > bar.queued and "approval" not in bar.marks:
                parts.append(
                    tag(
                        "rect",
                        x=f"{x(bar.queued):.1f}",
                        y=y + 13,
                        width=f"{max(x(bar.start) - x(bar.queued), 1):.1f}",
                        height=4,
                        class_="wait",
                    )
                )
            title = _title(bar)
            parts.append(
                tag(
                    "rect",
                    tag("title", title),
                    x=f"{x(bar.start):.1f}",
                    y=y + 6,
                    width=f"{max(x(bar.end) - x(bar.start), 3):.1f}",
                    height=LANE_H - 12,
                    class_=bar.css,
                    data_step=bar.step_key,
                    data_attempt=bar.attempt,
                    data_lane=f"{lane.environment}/{lane.agent}",
                )
            )
    if timeline.first_failure is not None:
        fx = f"{x(timeline.first_failure):.1f}"
        parts.append(
            tag(
                "line",
                tag("title", "first moment of true failure"),
                x1=fx,
                x2=fx,
                y1=AXIS_H - 4,
                y2=height,
                class_="first-failure-line",
            )
        )
    return tag(
        "svg",
        *parts,
        viewBox=f"0 0 {WIDTH} {height}",
        class_="timeline",
        role="img",
        aria_label="timeline of the run's attempts by environment and agent",
    )


def _axis(span: float, inner: float) -> Markup:
    ticks = []
    for i in range(5):
        x = LABEL_W + inner * i / 4
        ticks.append(tag("text", "+" + span_text(span * i / 4), x=f"{x:.1f}", y=14, class_="tick"))
    return Markup("".join(ticks))


def _title(bar: Bar) -> str:
    if "approval" in bar.marks:
        return f"approval {bar.step_key}: {bar.state}"
    took = span_text((bar.end - bar.start).total_seconds())
    waited = span_text((bar.start - bar.queued).total_seconds())
    marks = f" ({', '.join(bar.marks)})" if bar.marks else ""
    return f"{bar.step_key} attempt {bar.attempt}: {bar.state}{marks}, ran {took}, waited {waited}"


__all__ = ["Bar", "Lane", "Timeline", "build", "esc", "render"]
