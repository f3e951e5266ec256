"""``GET /runs/{id}/logs?step=KEY&after=ID[&limit=N]``: a run's log lines as JSON, a bounded
page at a time, for the Run page's step detail (``static/console.js`` polls it while the run is
live and appends the lines as text).

Same session, same role (``GetLogs``: viewer) and the same environment scope as the Run page: a
run outside the caller's scope is 404, as absent. Answers are JSON, errors too (no redirect to
the login page: a script is asking).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from control_plane.store import queries
from control_plane.web.guard import console_of, current_session, query, status_of
from control_plane.web.pages import RUN_ID
from control_plane.web.roles import Action, check
from meridian.core.errors import MeridianError, NotFound, ValidationError

PAGE_LINES = 500
MAX_STEP_KEY_CHARS = 512
MAX_LINE_CHARS = 16 * 1024
MAX_AFTER = 2**63 - 1


def _int(request: Request, name: str, default: int, low: int, high: int) -> int:
    text = query(request, name, 20)
    if not text:
        return default
    if not text.isdigit():
        raise ValidationError(f"{name} must be a whole number")
    value = int(text)
    if not low <= value <= high:
        raise ValidationError(f"{name} must be between {low} and {high}")
    return value


async def run_logs(request: Request) -> Response:
    console = console_of(request)
    session = await current_session(request)
    if session is None:
        return JSONResponse({"error": "log in first"}, 401)
    try:
        check(session.principal, Action.VIEW_LOGS)
        run_id = request.path_params["run_id"]
        if not isinstance(run_id, str) or not RUN_ID.match(run_id):
            raise NotFound(f"flow run {str(run_id)[:40]} does not exist")
        step = query(request, "step", MAX_STEP_KEY_CHARS)
        after = _int(request, "after", 0, 0, MAX_AFTER)
        limit = _int(request, "limit", PAGE_LINES, 1, PAGE_LINES)
        full_id = await console.store.run(
            queries.resolve_run_id, run_id, session.principal.environments
        )
        rows = await console.store.run(queries.logs_page, full_id, step, after, limit)
    except MeridianError as exc:
        status = status_of(exc)
        return JSONResponse({"error": "internal error" if status == 500 else str(exc)}, status)
    lines = [
        {
            "id": row.id,
            "step": row.step_key,
            "attempt": row.attempt_number,
            "stream": row.stream,
            "at": row.at.isoformat(),
            "text": row.text[:MAX_LINE_CHARS],
        }
        for row in rows
    ]
    return JSONResponse(
        {
            "run": full_id,
            "lines": lines,
            "next_after": lines[-1]["id"] if lines else after,
            "more": len(lines) == limit,
        }
    )
