"""API tokens for people and automation: format, roles, and what each role may call.

Format ``mat_<token_id>.<secret>``; only the SHA-256 of the secret is stored (as for join
tokens: 256 random bits need no slow hash). Roles nest: ``viewer`` reads, ``operator`` also
runs, cancels, resumes, retries and approves flows, ``admin`` also manages agents. A ``runner``
token is minted by ``CreateRun`` for one flow run and may only drive that run (submit and wait
for its steps, ask for its approvals, renew its lease, finish it). Pure: the store and the
interceptor use these tables. What a token scoped to environments may see and do is ruled in
``scopes.py``.
"""

from __future__ import annotations

import re
import secrets
from enum import IntEnum

from control_plane.auth.join_tokens import hash_secret
from meridian.core.errors import PermissionDenied

TOKEN_PREFIX = "mat_"
_TOKEN_RE = re.compile(r"^mat_(?P<id>[0-9a-f]{16})\.(?P<secret>[A-Za-z0-9_-]{43})$")


class Role(IntEnum):
    RUNNER = 0  # one flow run only (checked separately)
    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3


ROLES = {"viewer": Role.VIEWER, "operator": Role.OPERATOR, "admin": Role.ADMIN}
SERVICE = "/meridian.v1.ControlService/"

# Minimum role per ControlService method. Methods not listed here and not public are refused:
# a new RPC must be given a role on purpose.
REQUIRED_ROLE: dict[str, Role] = {
    **{
        SERVICE + m: Role.VIEWER
        for m in (
            "GetRun",
            "ListRuns",
            "GetLogs",
            "ListAgents",
            "WatchRun",
            "ListAuditRecords",
            "VerifyAudit",
            "HasBundle",
            "DownloadBundle",
            "FetchResult",
            "ListTransfers",
            "ListEnvironments",
            "ListDeployments",
            "GetDeployment",
            "ListDeploymentVersions",
            "ListLimits",
            "ListWebhooks",
        )
    },
    **{
        SERVICE + m: Role.OPERATOR
        for m in (
            "UploadBundle",
            "CreateRun",
            "SubmitSteps",
            "FinishRun",
            "RenewRunnerLease",
            "CancelRun",
            "ResumeRun",
            "RetryRun",
            "RequestApproval",
            "DecideApproval",
            "CreateDeployment",
            "TriggerDeployment",
            "SetDeploymentPaused",
            "CreateWebhook",
            "RevokeWebhook",
        )
    },
    SERVICE + "RevokeAgent": Role.ADMIN,
    SERVICE + "DrainAgent": Role.ADMIN,
    SERVICE + "DeleteRun": Role.ADMIN,
    SERVICE + "DeleteDeployment": Role.ADMIN,
    SERVICE + "CollectResults": Role.ADMIN,
    SERVICE + "SetResidency": Role.ADMIN,
    SERVICE + "SetLimit": Role.ADMIN,
    SERVICE + "DeleteLimit": Role.ADMIN,
}
# What a runner token may do, always for its own run only.
# A runner asks for approvals of its run but never decides them: that is a person's call.
RUNNER_METHODS = frozenset(
    SERVICE + m
    for m in (
        "SubmitSteps",
        "WatchRun",
        "FinishRun",
        "RenewRunnerLease",
        "GetRun",
        "RequestApproval",
        # ResultRef.load() in a flow body: a stored result of its own run's steps.
        "FetchResult",
        # A subflow: a deployment run whose parent is the token's own run (parent_run_id).
        "TriggerDeployment",
        # A subflow started in the body (@flow(subflow=True)): its parent is the token's run.
        "CreateRun",
    )
)
# What a runner token may also call for a direct child of its run (a deployment run it
# triggered with run_deployment, a subflow): read it, follow it, fetch its results; never drive it.
RUNNER_CHILD_READS = frozenset(SERVICE + m for m in ("GetRun", "WatchRun", "FetchResult"))
PUBLIC_PREFIXES = (
    SERVICE + "GetServerInfo",
    "/meridian.v1.AgentService/",  # Enroll by join token; the rest by client certificate
    "/grpc.health.v1.Health/",
    "/grpc.reflection.",
)


# A runner token is bound to the runner epoch it was minted for (decision 0018); the epoch is
# kept in the token's name, which runner tokens use for nothing else.
_RUNNER_EPOCH_PREFIX = "runner-epoch:"


def runner_token_name(epoch: int) -> str:
    return f"{_RUNNER_EPOCH_PREFIX}{int(epoch)}"


def runner_epoch_of(name: str) -> int:
    """The epoch a runner token was minted for (0 for tokens minted before epochs)."""
    if name.startswith(_RUNNER_EPOCH_PREFIX):
        try:
            return int(name[len(_RUNNER_EPOCH_PREFIX) :])
        except ValueError:
            return -1  # never equal to a run's epoch: such a token drives nothing
    return 0


def new_api_token() -> tuple[str, str, str]:
    """``(token_id, plaintext, secret_hash)``: show the plaintext once, store the hash."""
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return token_id, f"{TOKEN_PREFIX}{token_id}.{secret}", hash_secret(secret)


def parse_api_token(text: str) -> tuple[str, str]:
    """``(token_id, secret)``; never echoes the input, which may be a real secret."""
    match = _TOKEN_RE.match(text.strip())
    if match is None:
        raise PermissionDenied("malformed API token: expected 'mat_<id>.<secret>'")
    return match["id"], match["secret"]


def is_public(method: str) -> bool:
    return method.startswith(PUBLIC_PREFIXES)


def may_read_child(method: str, role: Role) -> bool:
    """Whether a refused runner call is one a parent's runner may make about its child (the
    caller then checks, in the store, that the run is a direct child of the token's run)."""
    return role == Role.RUNNER and method in RUNNER_CHILD_READS


def check_role(method: str, role: Role, scoped_run: str | None, request_run: str | None) -> None:
    """Raise PermissionDenied unless a token with ``role`` may call ``method``."""
    if role == Role.RUNNER:
        if method not in RUNNER_METHODS:
            raise PermissionDenied("a flow runner's token may only drive its own run")
        if not request_run or request_run != scoped_run:
            raise PermissionDenied("a flow runner's token is valid for its own run only")
        return
    needed = REQUIRED_ROLE.get(method)
    if needed is None:
        raise PermissionDenied(f"{method} is not open to API tokens")
    if role < needed:
        raise PermissionDenied(
            f"this call needs the {needed.name.lower()} role; the token is {role.name.lower()}"
        )
