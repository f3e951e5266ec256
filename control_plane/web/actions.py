"""State-changing console actions, through the same use cases the gRPC servicer calls.

Each is a POST guarded by ``guard.action`` (same origin, session, CSRF token, role) and ends
with a redirect (post/redirect/get). The run or agent is resolved within the caller's
environment scope first, exactly as ``ControlService`` does.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from control_plane.scheduler.registry import CloseOut, DrainOut
from control_plane.usecases.agent_admin import drain_agent, revoke_agent
from control_plane.usecases.approvals import decide_approval
from control_plane.usecases.runs import cancel_run
from control_plane.web.guard import action, console_of, field
from control_plane.web.pages import _visible_run
from control_plane.web.roles import Action
from control_plane.web.sessions import Session
from meridian.core.errors import ValidationError

MAX_REASON_BYTES = 1000
MAX_KEY_BYTES = 512


@action(Action.CANCEL)
async def cancel(request: Request, session: Session, form: Mapping[str, str]) -> Response:
    run_id = await _visible_run(request, session, request.path_params["run_id"])
    reason = field(form, "reason", MAX_REASON_BYTES) or "cancelled from the web console"
    await console_of(request).store.transact(cancel_run, run_id, reason)
    return RedirectResponse(f"/runs/{run_id}", status_code=303)


@action(Action.DECIDE)
async def decide(request: Request, session: Session, form: Mapping[str, str]) -> Response:
    run_id = await _visible_run(request, session, request.path_params["run_id"])
    key = field(form, "key", MAX_KEY_BYTES, required=True)
    decision = field(form, "decision", 16, required=True)
    if decision not in ("approve", "reject"):
        raise ValidationError("decision must be approve or reject")
    reason = field(form, "reason", MAX_REASON_BYTES)
    if decision == "reject" and not reason:
        raise ValidationError("a rejection needs a reason: say why")
    await console_of(request).store.transact(
        decide_approval, run_id, key, decision == "approve", reason
    )
    return RedirectResponse(f"/runs/{run_id}", status_code=303)


@action(Action.DRAIN)
async def drain(request: Request, session: Session, form: Mapping[str, str]) -> Response:
    console = console_of(request)
    ref = field(form, "agent", 255, required=True)
    reason = field(form, "reason", MAX_REASON_BYTES)
    agent = await console.store.transact(drain_agent, ref, reason, session.principal.environments)
    live = console.registry.get(agent.id)
    if live is not None:
        live.drain_requested = live.draining = True
        live.send(DrainOut(reason or "an operator drained this agent"))
    return RedirectResponse("/fleet", status_code=303)


@action(Action.REVOKE)
async def revoke(request: Request, session: Session, form: Mapping[str, str]) -> Response:
    console = console_of(request)
    ref = field(form, "agent", 255, required=True)
    reason = field(form, "reason", MAX_REASON_BYTES, required=True)
    agent = await console.store.transact(revoke_agent, ref, reason, session.principal.environments)
    live = console.registry.get(agent.id)
    if live is not None:
        live.send(CloseOut("this agent was revoked", refused=True))
    return RedirectResponse("/fleet", status_code=303)
