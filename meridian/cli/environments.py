"""``meridian environments list|residency``: environments, their data residency rules and the
result stores their agents have (over the network; setting a rule needs an admin token).

A residency rule is a label selector (``region in (eu-west-1,europe-west1)``): results produced
in the environment may only be read by steps on agents whose labels, with
``environment=<their environment>``, match it (docs/results.md); with ``--pinned-labels-only``
only the labels agents' join tokens pinned count, never those an agent claims.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from meridian import models
from meridian.cli.common import UsageError, add_client_options, connect
from meridian.cli.render import table, to_json

HEADERS = ("ENVIRONMENT", "RESIDENCY", "AGENTS", "CONNECTED", "RESULT STORES")


def register(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    environments = commands.add_parser(
        "environments",
        help="environments, their residency rules and result stores",
        parents=parents,
    )
    actions = environments.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser(
        "list",
        help="every environment with agents or a residency rule (over the network)",
        parents=parents,
    )
    listing.add_argument("--json", action="store_true", help="print JSON")
    add_client_options(listing)
    listing.set_defaults(func=cmd_list)

    residency = actions.add_parser(
        "residency",
        help="set or clear an environment's data residency rule (over the network; admins)",
        description="Results produced in ENVIRONMENT may then only be read by steps on agents "
        "whose labels (with environment=<their environment>) match RULE. The rule applies to "
        "steps queued from then on; the change is recorded in the audit log.",
        parents=parents,
    )
    residency.add_argument("environment", metavar="ENVIRONMENT")
    residency.add_argument(
        "rule",
        metavar="RULE",
        nargs="?",
        default=None,
        help='a label selector, e.g. "region in (eu-west-1,europe-west1)"',
    )
    residency.add_argument(
        "--pinned-labels-only",
        action="store_true",
        help="count only the labels agents' join tokens pinned (meridian tokens create "
        "--label), never labels an agent claims: a rule that holds against a compromised site",
    )
    residency.add_argument("--clear", action="store_true", help="remove the rule")
    residency.add_argument("--reason", default="", help="recorded in the audit log")
    add_client_options(residency)
    residency.set_defaults(func=cmd_residency)


def render_environments(environments: Sequence[models.EnvironmentInfo]) -> str:
    if not environments:
        return "no environments yet (enroll an agent: `meridian agent enroll`)"
    rows = [
        [
            e.name,
            _rule(e),
            str(e.agents),
            str(e.connected),
            _stores(e),
        ]
        for e in environments
    ]
    return table(HEADERS, rows)


def _rule(environment: models.EnvironmentInfo) -> str:
    if not environment.residency:
        return "-"
    if environment.residency_pinned_labels_only:
        return f"{environment.residency} (pinned labels only)"
    return environment.residency


def _stores(environment: models.EnvironmentInfo) -> str:
    """The advertised stores, the default one marked with ``*``."""
    if not environment.result_stores:
        return "-"
    names = [
        f"{name}*" if name == environment.default_result_store else name
        for name in environment.result_stores
    ]
    return ",".join(names)


def environments_to_json(environments: Sequence[models.EnvironmentInfo]) -> list[dict[str, Any]]:
    return [
        {
            "name": e.name,
            "residency": e.residency,
            "residency_pinned_labels_only": e.residency_pinned_labels_only,
            "agents": e.agents,
            "connected": e.connected,
            "result_stores": list(e.result_stores),
            "default_result_store": e.default_result_store,
        }
        for e in environments
    ]


def cmd_list(args: argparse.Namespace) -> int:
    with connect(args) as client:
        environments = client.list_environments()
    if args.json:
        print(to_json(environments_to_json(environments)))
    else:
        print(render_environments(environments))
    return 0


def cmd_residency(args: argparse.Namespace) -> int:
    if args.clear == (args.rule is not None):
        raise UsageError("give either a RULE or --clear")
    rule = "" if args.clear else args.rule
    if not args.clear and not rule.strip():
        raise UsageError("the RULE is empty; use --clear to remove a rule")
    if args.clear and args.pinned_labels_only:
        raise UsageError("--pinned-labels-only goes with a RULE, not with --clear")
    with connect(args) as client:
        environment = client.set_residency(
            args.environment, rule, args.reason, pinned_labels_only=args.pinned_labels_only
        )
    if environment.residency:
        which = (
            " by the labels agents' join tokens pinned"
            if environment.residency_pinned_labels_only
            else ""
        )
        print(
            f"environment {environment.name}: results may only be read where "
            f"{environment.residency!r} matches{which} (steps queued from now on)"
        )
    else:
        print(f"environment {environment.name}: no residency rule")
    return 0
