"""``meridian runs approve|reject RUN KEY``: decide an approval a flow body waits for.

Deciding needs the operator role (or admin); the decision and its reason go to the run's
history and, with the caller's token, to the audit log. Approving again is a no-op; changing
a decision is refused (a decision is final).
"""

from __future__ import annotations

import argparse
from typing import Any

from meridian import models
from meridian.cli.common import add_client_options, connect


def register(actions: Any, parents: list[argparse.ArgumentParser]) -> None:
    for name, text in (
        ("approve", "approve what a paused run waits for; its flow body continues"),
        ("reject", "reject what a paused run waits for; approve() raises ApprovalRejected"),
    ):
        parser = actions.add_parser(name, help=text, parents=parents)
        parser.add_argument("run", metavar="RUN", help="run id or a unique prefix of it")
        parser.add_argument(
            "key",
            metavar="KEY",
            help="the approval's key, e.g. deploy#1 (its name alone when one such is pending)",
        )
        parser.add_argument(
            "--reason",
            required=name == "reject",
            default="",
            help="why (at most 1 KiB); recorded with the decision and in the audit log"
            + ("" if name == "approve" else "; required"),
        )
        add_client_options(parser)
        parser.set_defaults(func=cmd_approve if name == "approve" else cmd_reject)


def cmd_approve(args: argparse.Namespace) -> int:
    return _decide(args, approve=True)


def cmd_reject(args: argparse.Namespace) -> int:
    return _decide(args, approve=False)


def _decide(args: argparse.Namespace, *, approve: bool) -> int:
    with connect(args) as client:
        state = client.decide_approval(args.run, args.key, approve, args.reason)
    print(decision_line(state))
    return 0


def decision_line(state: models.ApprovalState) -> str:
    """``Approval deploy#1 of run R: approved by token:ab12 (looks good); the run is RUNNING``."""
    approval = state.approval
    reason = f" ({approval.reason})" if approval.reason else ""
    return (
        f"Approval {approval.key} of run {approval.flow_run_id}: {approval.state} by "
        f"{approval.decided_by or '?'}{reason}; the run is {state.run_state}"
    )
