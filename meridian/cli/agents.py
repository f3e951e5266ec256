"""``meridian agents list``: the agents the control plane knows, and how they are doing."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from meridian import models
from meridian.cli.common import add_client_options, connect
from meridian.cli.render import format_seconds, iso, seconds_between, table, to_json

HEADERS = (
    *("NAME", "ENVIRONMENT", "LABELS", "PROVIDERS", "IN USE/CAPACITY"),
    *("VERSION", "HEARTBEAT", "STATUS", "CERT EXPIRES"),
)


def register(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    agents = commands.add_parser("agents", help="inspect enrolled agents", parents=parents)
    actions = agents.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="every agent with its status", parents=parents)
    listing.add_argument("--json", action="store_true", help="print JSON")
    add_client_options(listing)
    listing.set_defaults(func=cmd_list)
    for name, text in (
        ("revoke", "close the agent's stream now and refuse its certificate from then on"),
        ("drain", "stop new assignments to the agent; running steps finish"),
    ):
        parser = actions.add_parser(name, help=text, parents=parents)
        parser.add_argument("agent", metavar="AGENT", help="agent id, id prefix or name")
        parser.add_argument("--reason", default="", help="recorded in the audit log")
        add_client_options(parser)
        parser.set_defaults(func=cmd_revoke if name == "revoke" else cmd_drain)


def cmd_revoke(args: argparse.Namespace) -> int:
    with connect(args) as client:
        agent = client.revoke_agent(args.agent, args.reason)
    print(f"agent {agent.name} ({agent.agent_id}) in {agent.environment} is {agent.status}")
    return 0


def cmd_drain(args: argparse.Namespace) -> int:
    with connect(args) as client:
        agent = client.drain_agent(args.agent, args.reason)
    print(f"agent {agent.name} ({agent.agent_id}) in {agent.environment} is {agent.status}")
    return 0


def heartbeat_age(agent: models.AgentInfo, now: datetime) -> float | None:
    return seconds_between(agent.last_heartbeat, now)


def render_agents(agents: Sequence[models.AgentInfo], now: datetime) -> str:
    if not agents:
        return "no agents enrolled (see `meridian tokens create` and `meridian agent enroll`)"
    rows = []
    for a in sorted(agents, key=lambda a: (a.environment, a.name)):
        age = heartbeat_age(a, now)
        rows.append(
            [
                a.name,
                a.environment,
                ",".join(f"{k}={v}" for k, v in sorted(a.labels.items())) or "-",
                ",".join(a.providers) or "-",
                f"{a.in_use}/{a.capacity}",
                a.version or "-",
                f"{format_seconds(age)} ago" if age is not None else "never",
                _status(a),
                _expires(a, now),
            ]
        )
    return table(HEADERS, rows)


def _status(agent: models.AgentInfo) -> str:
    """The status, plus why the agent takes no work or was recently blocked."""
    notes = [f"degraded: {agent.degraded}"] if agent.degraded else []
    if agent.loop_stall_ms:
        notes.append(f"loop blocked {agent.loop_stall_ms / 1000:.1f}s")
    return f"{agent.status} ({'; '.join(notes)})" if notes else agent.status


def _expires(agent: models.AgentInfo, now: datetime) -> str:
    left = seconds_between(now, agent.cert_not_after)
    if left is None:
        return "-"
    return f"in {format_seconds(left)}" if left > 0 else "expired"


def agents_to_json(agents: Sequence[models.AgentInfo], now: datetime) -> list[dict[str, Any]]:
    return [
        {
            "agent_id": a.agent_id,
            "name": a.name,
            "environment": a.environment,
            "labels": dict(sorted(a.labels.items())),
            "providers": list(a.providers),
            "capacity": a.capacity,
            "in_use": a.in_use,
            "version": a.version,
            "last_heartbeat": iso(a.last_heartbeat),
            "heartbeat_age_s": heartbeat_age(a, now),
            "status": a.status,
            "degraded": a.degraded,
            "loop_stall_ms": a.loop_stall_ms,
            "hostname": a.hostname,
            "cert_fingerprint": a.cert_fingerprint,
            "cert_not_after": iso(a.cert_not_after),
        }
        for a in agents
    ]


def cmd_list(args: argparse.Namespace) -> int:
    with connect(args) as client:
        agents = client.list_agents()
    now = datetime.now(UTC)
    print(to_json(agents_to_json(agents, now)) if args.json else render_agents(agents, now))
    return 0
