"""``meridian deployments list|show|versions|pause|resume|delete|run`` (network)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from meridian import _deployments
from meridian.cli import runs, webhooks
from meridian.cli.common import UINT32_MAX, add_client_options, bounded_int, connect, parse_params
from meridian.cli.deploy import schedule_lines
from meridian.cli.render import format_datetime, table, to_json
from meridian.cli.run import add_progress_option
from meridian.core import paramschema


def register(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    group = commands.add_parser(
        "deployments", help="list, show, pause, resume, delete and run deployments",
        parents=parents,
    )  # fmt: skip
    actions = group.add_subparsers(dest="action", metavar="ACTION", required=True)

    def action(name: str, help_text: str, func: Any, *, named: bool = True) -> Any:
        parser = actions.add_parser(name, help=help_text, parents=parents)
        if named:
            parser.add_argument("name", metavar="NAME")
        add_client_options(parser)
        parser.set_defaults(func=func)
        return parser

    webhooks.register_under(actions, parents)
    listing = action("list", "deployments and their state", cmd_list, named=False)
    listing.add_argument("--json", action="store_true")
    show = action("show", "one deployment: spec, schedules, next fire times, recent runs", cmd_show)
    show.add_argument("--version", type=bounded_int(0, UINT32_MAX), default=0,
                      help="an older version (default current)")  # fmt: skip
    show.add_argument("--json", action="store_true")
    versions = action("versions", "every version of a deployment, newest first", cmd_versions)
    versions.add_argument("--json", action="store_true")
    for name, verb in (("pause", "pause"), ("resume", "resume")):
        parser = action(name, f"{verb} a deployment's schedules and automatic triggers", cmd_pause)
        parser.add_argument("--schedule", default="", metavar="ID", help="only this schedule")
        parser.set_defaults(paused=name == "pause")
    action("delete", "delete a deployment (admins; its runs and versions stay)", cmd_delete)
    run = action("run", "start a run of the deployment's current version", cmd_run)
    run.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE")
    run.add_argument("--idempotency-key", default="", metavar="KEY",
                     help="a repeat with the same key returns the same run")  # fmt: skip
    run.add_argument("--wait", action="store_true",
                     help="follow the run to its end; exit non-zero unless COMPLETED")  # fmt: skip
    add_progress_option(run)


def info_to_dict(info: _deployments.DeploymentInfo) -> dict[str, Any]:
    document = dict(info.__dict__)
    document["created_at"] = info.created_at.isoformat() if info.created_at else None
    document["schedules"] = [
        {**s.__dict__, "next_fires": [t.isoformat() for t in s.next_fires]} for s in info.schedules
    ]
    document["triggers"] = [t.__dict__ for t in info.triggers]
    document["recent_runs"] = [
        {**r.__dict__, "created_at": r.created_at.isoformat() if r.created_at else None}
        for r in info.recent_runs
    ]
    return document


def render_list(found: list[_deployments.DeploymentInfo]) -> str:
    if not found:
        return "no deployments"
    rows = [
        [
            d.name,
            str(d.version),
            d.flow_name,
            "paused" if d.paused else "active",
            str(len(d.schedules)),
            f"{d.active_runs} running, {d.queued_runs} queued",
            d.runner_target or "-",
        ]
        for d in found
    ]
    return table(("NAME", "VERSION", "FLOW", "STATE", "SCHEDULES", "RUNS", "RUNNER TARGET"), rows)


def shown(text: str) -> str:
    """``text`` for a terminal: characters that are not printable (escape sequences from
    versions stored before descriptions were checked) appear escaped, never raw."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def render_info(info: _deployments.DeploymentInfo) -> str:
    lines = [
        f"Deployment  {info.name} (version {info.version}){'  PAUSED' if info.paused else ''}",
        f"Flow        {info.flow_name} ({info.entrypoint}), bundle {info.bundle_sha256[:12]}",
        f"Created     {format_datetime(info.created_at)} by {info.created_by or '-'}",
        f"Runner      target {info.runner_target or '(any agent with runner slots)'}; "
        f"on lost: {info.on_runner_lost}, at most {info.max_runner_resumes} resumes",
        f"Concurrency {info.concurrency or 'unlimited'}"
        + (f", overflow {info.concurrency_overflow}" if info.concurrency else "")
        + _flow_limits(info),
    ]
    if info.description:
        about = [shown(line) for line in info.description.split("\n")]
        lines.append(f"About       {about[0] if about else ''}")
        lines += [f"            {line}" for line in about[1:]]
    if info.tags:
        lines.append(f"Tags        {shown(', '.join(info.tags))}")
    lines.append("Parameters")
    defaults = info.parameters
    for line in paramschema.describe(info.parameter_schema):
        lines.append(f"  {line}")
    if defaults:
        lines.append(f"  deployment defaults: {json.dumps(defaults, sort_keys=True)}")
    lines += schedule_lines(info)
    for trigger in info.triggers:
        states = ", ".join(trigger.states) or "COMPLETED"
        lines.append(f"Trigger     when a run of {trigger.upstream_deployment} ends {states}")
    lines.append(f"Runs        {info.active_runs} running, {info.queued_runs} queued")
    for r in info.recent_runs:
        lines.append(f"  {r.flow_run_id}  {r.state:<10} v{r.version}  {r.trigger:<9} "
                     f"{format_datetime(r.created_at)}")  # fmt: skip
    return "\n".join(lines)


def cmd_list(args: argparse.Namespace) -> int:
    with connect(args) as client:
        found = client.list_deployments()
    print(to_json([info_to_dict(d) for d in found]) if args.json else render_list(found))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with connect(args) as client:
        info = client.get_deployment(args.name, args.version)
    print(to_json(info_to_dict(info)) if args.json else render_info(info))
    return 0


def _flow_limits(info: _deployments.DeploymentInfo) -> str:
    if not info.flow_concurrency:
        return ""
    return f"; each run holds limit(s) {', '.join(info.flow_concurrency)}"


def cmd_versions(args: argparse.Namespace) -> int:
    with connect(args) as client:
        found = client.list_deployment_versions(args.name)
    if args.json:
        print(to_json([info_to_dict(v) for v in found]))
        return 0
    rows = [
        [str(v.version), format_datetime(v.created_at), v.created_by or "-", v.bundle_sha256[:12],
         str(len(v.schedules)), shown(v.description.partition("\n")[0])[:60] or "-"]
        for v in found
    ]  # fmt: skip
    print(table(("VERSION", "CREATED", "BY", "BUNDLE", "SCHEDULES", "DESCRIPTION"), rows))
    return 0


def cmd_pause(args: argparse.Namespace) -> int:
    with connect(args) as client:
        info = client.set_deployment_paused(args.name, args.paused, args.schedule)
    what = f"schedule {args.schedule} of {info.name}" if args.schedule else info.name
    print(f"{'Paused' if args.paused else 'Resumed'} {what}")
    print("\n".join(schedule_lines(info)))
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    with connect(args) as client:
        info = client.delete_deployment(args.name)
    print(f"Deleted deployment {info.name} (its {info.version} version(s) and runs stay in the "
          "history; deploying the name again restores it)")  # fmt: skip
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    raw = parse_params(args.param)
    with connect(args) as client:
        params: dict[str, Any] = dict(raw)
        if raw:
            schema = client.get_deployment(args.name).parameter_schema
            params = paramschema.from_text(schema, raw)
        result = client.trigger_deployment(args.name, params, idempotency_key=args.idempotency_key)
    if not result.flow_run_id:
        print(f"No run started: {result.message}")
        return 1 if args.wait else 0
    again = " (the run of this idempotency key)" if result.existing else ""
    print(f"Run {result.flow_run_id} of {args.name}: {result.state}{again}")
    if not args.wait:
        print(f"Follow it with: meridian runs watch {result.flow_run_id}")
        return 0
    args.run = result.flow_run_id
    return runs.cmd_watch(args)
