"""What each console page and action needs: the gRPC method it stands for, so the role table
in ``control_plane/auth/api_tokens.py`` decides for both (one table, no second copy)."""

from __future__ import annotations

from enum import StrEnum

from control_plane.auth.api_token_store import Principal
from control_plane.auth.api_tokens import SERVICE, Role, check_role
from meridian.core.errors import PermissionDenied


class Action(StrEnum):
    VIEW_RUNS = SERVICE + "ListRuns"
    VIEW_RUN = SERVICE + "GetRun"
    VIEW_LOGS = SERVICE + "GetLogs"
    VIEW_FLEET = SERVICE + "ListAgents"
    VIEW_AUDIT = SERVICE + "ListAuditRecords"
    CANCEL = SERVICE + "CancelRun"
    DECIDE = SERVICE + "DecideApproval"
    DRAIN = SERVICE + "DrainAgent"
    REVOKE = SERVICE + "RevokeAgent"


def check(principal: Principal, action: Action) -> None:
    """Raise PermissionDenied unless ``principal`` may do ``action``. A flow runner's token
    never opens the console: it is bound to one run and to calls a person never makes."""
    if principal.role == Role.RUNNER:
        raise PermissionDenied("a flow runner's token cannot open the console")
    check_role(str(action), principal.role, None, None)


def allowed(principal: Principal, action: Action) -> bool:
    try:
        check(principal, action)
    except PermissionDenied:
        return False
    return True
