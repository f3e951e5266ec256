"""The console's pages: Runs, Run (timeline, steps, events, actions), Fleet and Audit.

Reads go through ``store.queries`` and ``audit`` with the caller's environment scope applied
exactly as the gRPC servicer applies it: runs outside the scope are 404 (as absent), agents of
other environments are not listed, and the audit log (one chain for every environment) is
closed to scoped tokens.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from control_plane import audit
from control_plane.store import queries
from control_plane.telemetry.fleet import agent_status, last_heard
from control_plane.usecases.run_waits import run_waiting_for
from control_plane.web import timeline
from control_plane.web.guard import console_of, page, query
from control_plane.web.html import (
    Markup,
    age,
    badge,
    esc,
    form,
    join,
    layout,
    reason_input,
    span_text,
    table,
    tag,
    when,
)
from control_plane.web.roles import Action, allowed
from control_plane.web.sessions import Session
from meridian.core.errors import NotFound, PermissionDenied, ValidationError
from meridian.core.kinds import ApprovalState
from meridian.core.resultref import ResultRef
from meridian.core.states import TERMINAL_RUN, RunState

RUN_ID = re.compile(r"^[0-9a-f-]{4,36}$")
SINCE = {"1h": 3600, "24h": 86400, "7d": 7 * 86400}
MAX_RUNS = 200
MAX_ENVIRONMENT_CHARS = 253
MAX_STEP_KEY_CHARS = 512
MAX_EVENTS_SHOWN = 500
MAX_JSON_SHOWN = 32 * 1024
LIVE_S = "3"


def _page(title: str, body: Markup, session: Session, active: str) -> HTMLResponse:
    who = f"{session.principal.role.name.lower()} · {session.principal.token_id[:8]}"
    return HTMLResponse(layout(title, body, who=who, csrf=session.csrf, active=active))


def _live(body: Markup, live: bool = True) -> Markup:
    return tag("section", body, id="live", data_live=LIVE_S if live else None)


def run_link(run_id: str) -> Markup:
    return tag("a", run_id[:8], href=f"/runs/{run_id}", class_="mono", title=run_id)


@page(Action.VIEW_RUNS)
async def runs(request: Request, session: Session) -> Response:
    console = console_of(request)
    state_text, flow, environment, since = (
        query(request, "state", 16),
        query(request, "flow", 255),
        query(request, "environment", MAX_ENVIRONMENT_CHARS),
        query(request, "since", 8),
    )
    state = None
    if state_text:
        try:
            state = RunState(state_text)
        except ValueError:
            raise ValidationError(f"unknown run state {state_text!r}") from None
    if since and since not in SINCE:
        raise ValidationError(f"since must be one of {', '.join(SINCE)}")
    now = console.store.clock()
    cutoff = now - dt.timedelta(seconds=SINCE[since]) if since else None
    rows = await console.store.run(
        lambda s: queries.list_runs(
            s,
            MAX_RUNS,
            state,
            flow,
            session.principal.environments,
            environment=environment,
            since=cutoff,
        )
    )
    body = (
        tag("h1", "Runs")
        + _runs_filter(state_text, flow, environment, since)
        + _live(_runs_table(rows, now))
    )
    return _page("Runs", body, session, "/runs")


def _runs_filter(state: str, flow: str, environment: str, since: str) -> Markup:
    states = [tag("option", "any state", value="")] + [
        tag("option", s.value, value=s.value, selected=s.value == state) for s in RunState
    ]
    times = [tag("option", "any time", value="")] + [
        tag("option", f"last {k}", value=k, selected=k == since) for k in SINCE
    ]
    return tag(
        "form",
        tag("select", *states, name="state", aria_label="state"),
        tag(
            "input", type="text", name="flow", value=flow, placeholder="flow name", maxlength="255"
        ),
        tag(
            "input",
            type="text",
            name="environment",
            value=environment,
            placeholder="environment",
            maxlength=str(MAX_ENVIRONMENT_CHARS),
            aria_label="environment",
        ),
        tag("select", *times, name="since", aria_label="since"),
        tag("button", "Filter", type="submit"),
        method="get",
        action="/runs",
        class_="filters",
    )


def _runs_table(rows: list, now: dt.datetime) -> Markup:  # type: ignore[type-arg]
    if not rows:
        return tag("p", "No runs match.", class_="empty")
    body = []
    for run, steps, failed in rows:
        took = ((run.ended_at or now) - (run.started_at or run.created_at)).total_seconds()
        body.append(
            (
                run_link(run.id),
                run.flow_name,
                badge(str(run.state)),
                run.trigger,
                when(run.created_at),
                span_text(took),
                f"{steps}" + (f" ({failed} failed)" if failed else ""),
            )
        )
    return table(
        ["Run", "Flow", "State", "Trigger", "Created (UTC)", "Duration", "Steps"],
        body,
        class_="runs",
    )


async def _visible_run(request: Request, session: Session, run_id: str) -> str:
    if not RUN_ID.match(run_id):
        raise NotFound(f"flow run {run_id[:40]} does not exist")
    console = console_of(request)
    return await console.store.run(queries.resolve_run_id, run_id, session.principal.environments)


@page(Action.VIEW_RUN)
async def run(request: Request, session: Session) -> Response:
    console = console_of(request)
    run_id = await _visible_run(request, session, request.path_params["run_id"])
    view = await console.store.run(queries.run_view, run_id)
    now = console.store.clock()
    r = view.run
    live = r.state not in TERMINAL_RUN
    step_key = query(request, "step", MAX_STEP_KEY_CHARS)
    header = tag("h1", f"{r.flow_name} ", badge(str(r.state)), class_="run-title")
    facts = table(
        ["Run", "Trigger", "Created (UTC)", "Started", "Ended", "Retry of"],
        [
            (
                tag("span", r.id, class_="mono"),
                r.trigger,
                when(r.created_at),
                when(r.started_at),
                when(r.ended_at),
                r.retry_of or "—",
            )
        ],
    )
    waiting = ""
    if r.state == RunState.PENDING or r.wants_runner:  # why it has not started (runner, limit)
        waiting = await console.store.run(run_waiting_for, r.id, now)
    body = join(
        [
            header,
            facts,
            tag("p", f"Waiting: {waiting}", class_="waiting") if waiting else Markup(""),
            _run_actions(view, session),
            _live(
                join(
                    [
                        tag("h2", "Timeline"),
                        _legend(),
                        timeline.render(timeline.build(view, now)),
                        _approvals(view, session),
                        tag("h2", "Steps"),
                        _steps(view),
                        tag("h2", "Result"),
                        _result(r),
                        tag("h2", "Events"),
                        _events(view),
                    ]
                ),
                live,
            ),
            _step_detail(view, step_key, live),
            tag("h2", "Parameters"),
            tag("pre", _pretty(r.parameters_json)),
        ]
    )
    return _page(f"Run {r.id[:8]}", body, session, "/runs")


def _step_detail(view: queries.RunView, step_key: str, live: bool) -> Markup:
    """The chosen step's logs, outside the refreshed section: ``console.js`` fills
    ``#step-log`` from ``/runs/{id}/logs`` (text only) and keeps polling while the run is live."""
    if not step_key:
        return Markup("")
    step = next((s for s in view.steps if s.key == step_key), None)
    if step is None:
        return tag("h2", "Step ", tag("span", step_key, class_="mono")) + tag(
            "p", "No such step in this run.", class_="empty"
        )
    return tag(
        "section",
        tag("h2", "Step ", tag("span", step.key, class_="mono"), " ", badge(str(step.state))),
        tag("h3", "Result"),
        _result(step),
        tag("h3", "Logs"),
        tag("pre", "", id="step-log", class_="log", aria_live="polite"),
        id="step-detail",
        data_run=view.run.id,
        data_step=step.key,
        data_live="1" if live else None,
    )


def _legend() -> Markup:
    items = [
        ("succeeded", "succeeded"),
        ("failed", "failed"),
        ("recovered", "recovered failure (retried, step completed)"),
        ("first-failure", "first moment of true failure"),
        ("approval", "approval"),
    ]
    return tag(
        "ul",
        *(tag("li", tag("span", "", class_=f"swatch {k}"), label) for k, label in items),
        class_="legend",
    )


def _run_actions(view: queries.RunView, session: Session) -> Markup:
    r = view.run
    parts: list[Markup] = []
    if (
        allowed(session.principal, Action.CANCEL)
        and (r.state not in TERMINAL_RUN or r.state == RunState.CRASHED)
        and r.state != RunState.CANCELLING
    ):
        parts.append(
            form(
                f"/runs/{r.id}/cancel",
                session.csrf,
                reason_input(),
                button="Cancel run",
                danger=True,
            )
        )
    if allowed(session.principal, Action.CANCEL) and r.state in TERMINAL_RUN:
        # Resume and retry run the flow body again, which needs a flow runner with the code:
        # the control plane never executes user code (decision 0014).
        parts.append(
            tag(
                "p",
                "Resume or retry from a machine with the flow's code: ",
                tag("code", f"meridian runs resume {r.id}"),
                " · ",
                tag("code", f"meridian runs retry {r.id}"),
                class_="hint",
            )
        )
    return tag("div", *parts, class_="actions") if parts else Markup("")


def _approvals(view: queries.RunView, session: Session) -> Markup:
    if not view.approvals:
        return Markup("")
    can_decide = allowed(session.principal, Action.DECIDE)
    rows = []
    for a in view.approvals:
        decide: Markup = Markup("")
        if can_decide and a.state == ApprovalState.PENDING:
            key = tag("input", type="hidden", name="key", value=a.key)
            decide = join(
                [
                    form(
                        f"/runs/{view.run.id}/decide",
                        session.csrf,
                        key,
                        tag("input", type="hidden", name="decision", value="approve"),
                        reason_input(),
                        button="Approve",
                    ),
                    form(
                        f"/runs/{view.run.id}/decide",
                        session.csrf,
                        key,
                        tag("input", type="hidden", name="decision", value="reject"),
                        reason_input(required=True),
                        button="Reject",
                        danger=True,
                    ),
                ]
            )
        rows.append(
            (
                a.key,
                a.message,
                badge(str(a.state)),
                when(a.requested_at),
                a.decided_by or "—",
                a.reason or "—",
                decide,
            )
        )
    return tag("h2", "Approvals") + table(
        ["Key", "Message", "State", "Requested", "Decided by", "Reason", ""],
        rows,
        class_="approvals",
    )


def _steps(view: queries.RunView) -> Markup:
    rows = []
    for step in view.steps:
        attempts = view.attempts.get(step.id, [])
        tries = []
        for a in attempts:
            where = f"{a.environment or '?'}/{view.agent_names.get(a.agent_id or '', '—')}"
            mark = ""
            if str(a.state) in timeline.FAILED and str(step.state) in ("COMPLETED", "CACHED"):
                mark = "recovered"
            error = f" {a.error.type}: {a.error.message[:200]}" if a.error else ""
            tries.append(
                tag(
                    "li",
                    f"#{a.number} ",
                    badge(str(a.state)),
                    f" {where}{error} ",
                    badge(mark, "recovered") if mark else "",
                    class_="attempt " + mark,
                )
            )
        rows.append(
            (
                tag(
                    "a",
                    step.key,
                    href=f"/runs/{view.run.id}?{urlencode({'step': step.key})}#step-detail",
                    class_="mono step-link",
                ),
                badge(str(step.state)),
                tag("ol", *tries, class_="attempts") if tries else _reused_from(step),
            )
        )
    return (
        table(["Step", "State", "Attempts"], rows, class_="steps")
        if rows
        else tag("p", "No steps yet.", class_="empty")
    )


def _reused_from(step: queries.StepRunRow) -> Markup:
    """Where a CACHED step's result came from (caching across runs), linked; else nothing."""
    if not step.cached_from_run_id:
        return Markup("")
    source = step.cached_from_run_id
    return tag(
        "p",
        "reused from run ",
        tag("a", source, href=f"/runs/{source}", class_="mono"),
        f" (step {step.cached_from_step_key or '?'})",
        class_="hint",
    )


def _result(r: object) -> Markup:
    error = getattr(r, "error", None)
    if error is not None:
        return tag("pre", f"{error.type}: {error.message}", class_="error")
    ref_json = getattr(r, "result_ref_json", None)
    if ref_json:
        return _stored_result(ref_json)
    result = getattr(r, "result_json", None)
    return tag("pre", _pretty(result)) if result else tag("p", "—")


def _stored_result(ref_json: str) -> Markup:
    """A result that stayed at its site: its reference, never its bytes."""
    try:
        ref = ResultRef.from_json(ref_json)
    except ValidationError:
        return tag("p", "stored result (unreadable reference)", class_="error")
    sealed = ", sealed" if ref.sealed else ""
    return join(
        [
            tag(
                "p",
                f"stored result: {_size(ref.size)} in {ref.environment}/{ref.store} "
                f"({ref.serializer}{sealed}, sha256 {ref.sha256[:12]}…)",
            ),
            tag("p", tag("span", ref.uri, class_="mono"), class_="hint"),
        ]
    )


def _size(size: int) -> str:
    value, unit = float(size), "bytes"
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{size} bytes" if unit == "bytes" else f"{value:.1f} {unit}"


def _events(view: queries.RunView) -> Markup:
    shown = view.events[-MAX_EVENTS_SHOWN:]
    rows = [
        (when(e.created_at), e.kind, e.step_key or "", e.to_state or "", e.message[:500])
        for e in shown
    ]
    note = (
        tag("p", f"showing the last {len(shown)} of {len(view.events)} events", class_="hint")
        if len(shown) < len(view.events)
        else Markup("")
    )
    return note + table(["At (UTC)", "Event", "Step", "State", "Message"], rows, class_="events")


def _pretty(text: str | None) -> str:
    if not text:
        return ""
    try:
        pretty = json.dumps(json.loads(text), indent=2, sort_keys=True)
    except (ValueError, RecursionError):
        pretty = text
    return pretty if len(pretty) <= MAX_JSON_SHOWN else pretty[:MAX_JSON_SHOWN] + "\n… (truncated)"


@page(Action.VIEW_FLEET)
async def fleet(request: Request, session: Session) -> Response:
    console = console_of(request)
    rows = await console.store.run(queries.all_agents)
    scope = session.principal.environments
    if scope:
        rows = [(a, held) for a, held in rows if a.environment in scope]
    live = {s.agent.agent_id: s for s in console.registry.sessions()}
    now = console.store.clock()
    admin = allowed(session.principal, Action.DRAIN)
    by_env: dict[str, list[tuple[object, ...]]] = {}
    for agent, held in rows:
        session_live = live.get(agent.id)
        status = agent_status(agent, session_live, now, console.heartbeats)
        in_use = session_live.in_use if session_live is not None else held
        manage: Markup = Markup("")
        if admin and status != "revoked":
            target = tag("input", type="hidden", name="agent", value=agent.id)
            manage = join(
                [
                    form("/fleet/drain", session.csrf, target, reason_input(), button="Drain")
                    if status != "draining"
                    else Markup(""),
                    form(
                        "/fleet/revoke",
                        session.csrf,
                        target,
                        reason_input(required=True),
                        button="Revoke",
                        danger=True,
                    ),
                ]
            )
        expiry = "—"
        if agent.cert_not_after is not None:
            left = span_text((agent.cert_not_after - now).total_seconds())
            expiry = f"{when(agent.cert_not_after)} (in {left})"
        by_env.setdefault(agent.environment, []).append(
            (
                tag("span", agent.name, class_="mono", title=agent.id),
                tag(
                    "span",
                    status,
                    class_=f"badge {status}",
                    data_agent=agent.name,
                    data_status=status,
                ),
                ", ".join(f"{k}={v}" for k, v in sorted(agent.labels.items())),
                ", ".join(str(p) for p in agent.providers),
                f"{in_use}/{agent.capacity}",
                age(last_heard(agent, session_live, now), now),
                Markup(expiry),
                agent.version,
                manage,
            )
        )
    sections = [
        tag("h2", env)
        + table(
            [
                "Agent",
                "Status",
                "Labels",
                "Providers",
                "In use",
                "Heartbeat",
                "Certificate expires",
                "Version",
                "",
            ],
            agents,
            class_="agents",
        )
        for env, agents in sorted(by_env.items())
    ] or [tag("p", "No agents enrolled.", class_="empty")]
    return _page("Fleet", tag("h1", "Fleet") + _live(join(sections)), session, "/fleet")


def _audit_allowed(session: Session) -> None:
    if session.principal.environments:
        raise PermissionDenied(
            "the audit log spans every environment; reading it needs an API token that is not "
            "scoped to environments"
        )


@page(Action.VIEW_AUDIT)
async def audit_log(request: Request, session: Session) -> Response:
    _audit_allowed(session)
    console = console_of(request)
    actor, action_prefix = query(request, "actor", 200), query(request, "action", 200)
    records = await console.store.run(
        lambda s: list(audit.list_records(s, limit=1000, newest=True))
    )
    report = await console.store.run(audit.verify_chain)
    shown = [
        r
        for r in reversed(records)
        if (not actor or actor in r.actor)
        and (not action_prefix or r.action.startswith(action_prefix))
    ][:MAX_RUNS]
    status = (
        tag(
            "p",
            badge("verified", "ok"),
            f" chain intact: {report.records} records, head #{report.head_id} ",
            tag("code", report.head_hash[:16]),
            class_="chain",
        )
        if report.ok
        else tag(
            "p",
            badge("broken", "failed"),
            f" chain broken at record #{report.first_bad_id}: {report.problem}",
            class_="chain",
        )
    )
    filters = tag(
        "form",
        tag(
            "input",
            type="text",
            name="actor",
            value=actor,
            placeholder="actor contains",
            maxlength="200",
        ),
        tag(
            "input",
            type="text",
            name="action",
            value=action_prefix,
            placeholder="action starts with",
            maxlength="200",
        ),
        tag("button", "Filter", type="submit"),
        tag(
            "a",
            "Export JSON",
            href="/audit/export.json",
            class_="button",
            download="meridian-audit.json",
        ),
        method="get",
        action="/audit",
        class_="filters",
    )
    rows = [
        (r.id, when(r.at), r.actor, r.action, r.subject, tag("code", r.details[:300]))
        for r in shown
    ]
    body = (
        tag("h1", "Audit")
        + status
        + filters
        + table(["#", "At (UTC)", "Actor", "Action", "Subject", "Details"], rows, class_="audit")
    )
    return _page("Audit", body, session, "/audit")


MAX_EXPORT = 100_000


@page(Action.VIEW_AUDIT)
async def audit_export(request: Request, session: Session) -> Response:
    _audit_allowed(session)
    console = console_of(request)
    out: list[dict[str, object]] = []
    after = 0
    while len(out) < MAX_EXPORT:
        page_rows = await console.store.run(
            lambda s, a=after: list(audit.list_records(s, after_id=a, limit=1000))
        )
        if not page_rows:
            break
        out.extend(
            {
                "id": r.id,
                "at": audit.format_at(r.at),
                "actor": r.actor,
                "action": r.action,
                "subject": r.subject,
                "details": r.details,
                "prev_hash": r.prev_hash,
                "hash": r.hash,
            }
            for r in page_rows
        )
        after = page_rows[-1].id
    report = await console.store.run(audit.verify_chain)
    payload = {
        "verified": report.ok,
        "records": out,
        "head_id": report.head_id,
        "head_hash": report.head_hash,
    }
    return Response(
        json.dumps(payload, indent=1),
        media_type="application/json",
        headers={"content-disposition": 'attachment; filename="meridian-audit.json"'},
    )


__all__ = ["audit_export", "audit_log", "esc", "fleet", "run", "runs"]
