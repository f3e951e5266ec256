"""``meridian deploy FILE:FLOW --name NAME``: upload the flow's code bundle and register the
next version of a named deployment (network).

The bundle is built and uploaded exactly as ``meridian run`` does; the flow's parameter
schema is extracted from its signature (``meridian/core/paramschema.py``) so the control
plane checks every trigger without the code; ``--param`` values are converted with the
flow's type hints (``meridian/sdk/params.py``: datetime, date, Enum, Path, pydantic...).
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from meridian import _deployments
from meridian.cli.common import (
    UsageError,
    add_client_options,
    bounded_int,
    connect,
    int_between,
    parse_params,
)
from meridian.cli.render import format_datetime
from meridian.cli.run import check_entrypoint
from meridian.core import jsondepth

SCHEDULE_HELP = """\
--schedule SPEC (repeatable), one of:
  cron=EXPR[,tz=ZONE]          cron=0 2 * * *,tz=Europe/Berlin   (5 fields or @daily; default UTC)
  every=DURATION[,anchor=ISO]  every=30m  every=1h,anchor=2026-01-01T00:30:00Z
                               (no anchor: aligned to midnight UTC)
  at=ISO                       at=2026-05-01T09:00:00+02:00      (one-off, with an offset)
each optionally followed by options separated by ';':
  ;catch-up=skip|latest|all    after downtime: fire none (default), the latest, or all
  ;window=DURATION             how far back catch-up reaches (default 1d)
  ;max-runs=N                  catch-up runs per evaluation with 'all' (1-1000, default 10)
  ;jitter=DURATION             a random-looking but fixed delay per slot, below it
  ;param.NAME=VALUE            a parameter of this schedule's runs (over --param)
DURATION: a number and a unit s, m, h or d (30s, 5m, 1h, 2d). Quote the whole SPEC.
"""
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# Without an anchor, intervals are aligned to midnight UTC (every=1h fires on the hour).
DEFAULT_ANCHOR = "2000-01-01T00:00:00+00:00"
# The control plane's bounds (orchestration/runners.py, catchup.py), checked here first.
MAX_RUNNER_RESUMES = 100
MAX_CONCURRENCY = 10_000
MAX_CATCH_UP_RUNS = 1000


def register(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    deploy = commands.add_parser(
        "deploy",
        help="register a new version of a named deployment of a flow",
        parents=parents,
        description="Upload FILE:FLOW's code bundle and register it as the next version of "
        "deployment NAME (network). Its runs execute on a hosted flow runner of an agent "
        "matching --runner-target.",
        epilog=SCHEDULE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    deploy.add_argument("entrypoint", metavar="FILE:FLOW", help="e.g. flows/etl.py:nightly")
    deploy.add_argument("--name", required=True, help="the deployment's name")
    deploy.add_argument("--runner-target", default="", metavar="SELECTOR",
                        help="labels of the agents that run the flow body: pool=batch")  # fmt: skip
    deploy.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                        help="a default parameter (repeatable)")  # fmt: skip
    deploy.add_argument("--schedule", action="append", default=[], metavar="SPEC",
                        help="a schedule (repeatable; grammar below)")  # fmt: skip
    deploy.add_argument("--concurrency", type=bounded_int(0, MAX_CONCURRENCY), default=0,
                        metavar="N",
                        help="at most N unfinished runs (0: unlimited)")  # fmt: skip
    deploy.add_argument("--concurrency-overflow", choices=("queue", "skip"), default="queue")
    deploy.add_argument("--on-runner-lost", choices=("resume", "fail"), default="resume")
    deploy.add_argument("--max-runner-resumes", type=bounded_int(0, MAX_RUNNER_RESUMES),
                        default=None, metavar="N",
                        help="resume a run whose runner was lost at most N times (default 3; "
                        "0: the first lost runner fails it)")  # fmt: skip
    deploy.add_argument("--description", default="")
    deploy.add_argument("--tag", action="append", default=[])
    deploy.add_argument("--on-completion-of", action="append", default=[], metavar="DEPLOYMENT",
                        help="also run when a run of DEPLOYMENT ends (repeatable; --on-state "
                        "and --upstream-*-param apply to each)")  # fmt: skip
    deploy.add_argument("--on-state", action="append", default=[], metavar="STATE",
                        help="end states that trigger (default COMPLETED; repeatable)")  # fmt: skip
    deploy.add_argument("--upstream-run-param", default="", metavar="NAME",
                        help="parameter that receives the upstream run's id")  # fmt: skip
    deploy.add_argument("--upstream-result-param", default="", metavar="NAME",
                        help="parameter that receives the upstream run's result")  # fmt: skip
    add_client_options(deploy)
    deploy.set_defaults(func=cmd_deploy)


def parse_duration(text: str, what: str) -> float:
    match = _DURATION.match(text)
    if match is None:
        raise UsageError(f"{what} {text!r} must be a number and a unit s, m, h or d (e.g. 5m)")
    return float(match[1]) * _UNITS[match[2]]


def parse_schedule(text: str) -> tuple[_deployments.ScheduleRequest, dict[str, str]]:
    """One ``--schedule`` SPEC: the request (parameters still raw) and its raw parameters."""
    head, *options = [part.strip() for part in text.split(";")]
    definition = _definition(head)
    fields: dict[str, Any] = {}
    params: dict[str, str] = {}
    for option in options:
        key, sep, value = option.partition("=")
        key = key.strip()
        if not sep:
            raise UsageError(f"schedule option {option!r} must look like name=value")
        if key.startswith("param.") and key[6:].isidentifier():
            params[key[6:]] = value
        elif key == "catch-up":
            fields["catch_up"] = value.strip()
        elif key == "window":
            window = parse_duration(value, "window")
            if window <= 0:
                # On the wire 0 means "the default window" (1d): say so instead of widening it.
                raise UsageError(
                    "window must be longer than 0 (to fire no missed slot, use catch-up=skip)"
                )
            fields["catch_up_window_s"] = window
        elif key == "max-runs":
            fields["max_catch_up_runs"] = _count(value)
        elif key == "jitter":
            fields["jitter_s"] = parse_duration(value, "jitter")
        else:
            raise UsageError(
                f"unknown schedule option {key!r}: use catch-up, window, max-runs, jitter, "
                "param.NAME"
            )
    return _deployments.ScheduleRequest(definition, **fields), params


def _definition(head: str) -> dict[str, Any]:
    kind, sep, rest = head.partition("=")
    kind = kind.strip()
    if not sep or kind not in ("cron", "every", "at"):
        raise UsageError(f"schedule {head!r} must start with cron=, every= or at= (see --help)")
    if kind == "cron":
        expression, _, zone = rest.partition(",tz=")
        return {"kind": "cron", "cron": expression.strip(), "timezone": zone.strip() or "UTC"}
    if kind == "every":
        every, _, anchor = rest.partition(",anchor=")
        return {
            "kind": "interval",
            "every_seconds": parse_duration(every, "interval"),
            "anchor": anchor.strip() or DEFAULT_ANCHOR,
        }
    return {"kind": "once", "at": rest.strip().replace("Z", "+00:00")}


def _count(text: str) -> int:
    try:
        return int_between(text, 1, MAX_CATCH_UP_RUNS)
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"max-runs: {exc} (catch-up runs per evaluation)") from None


def outcome_triggers(args: argparse.Namespace) -> tuple[_deployments.OutcomeTriggerRequest, ...]:
    """One trigger per ``--on-completion-of``; the states and parameters apply to each."""
    upstreams: list[str] = args.on_completion_of
    if not upstreams:
        if args.on_state or args.upstream_run_param or args.upstream_result_param:
            raise UsageError("--on-state and --upstream-*-param need --on-completion-of")
        return ()
    repeated = sorted({u for u in upstreams if upstreams.count(u) > 1})
    if repeated:
        raise UsageError(f"--on-completion-of {repeated[0]} is given more than once")
    return tuple(
        _deployments.OutcomeTriggerRequest(
            upstream, tuple(args.on_state), args.upstream_run_param, args.upstream_result_param
        )
        for upstream in upstreams
    )


def convert_partial(fn: Callable[..., Any], raw: Mapping[str, str]) -> dict[str, Any]:
    """``-p`` texts converted by the flow's annotations (rich types) to their JSON form;
    required parameters may be left to schedules or triggers."""
    from meridian.sdk.params import _type_hints, convert, encode_params

    signature = inspect.signature(fn)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    hints = _type_hints(fn)
    values: dict[str, Any] = {}
    for name, text in raw.items():
        if name not in signature.parameters and not takes_any:
            known = ", ".join(signature.parameters) or "none"
            raise UsageError(f"unknown parameter {name!r} (the flow takes: {known})")
        try:
            values[name] = convert(name, text, hints.get(name, inspect.Parameter.empty), rich=True)
        except RecursionError:
            raise jsondepth.too_deep(f"parameter {name!r}") from None
        jsondepth.check_depth(values[name], f"parameter {name!r}")
    return encode_params(values)


def cmd_deploy(args: argparse.Namespace) -> int:
    from meridian.core.bundle import pack_directory
    from meridian.core.paramschema import schema_from_function
    from meridian.sdk.loader import load_entrypoint

    entrypoint = check_entrypoint(args.entrypoint)
    loaded = load_entrypoint(entrypoint)
    fn = loaded.flow.fn
    schema = schema_from_function(fn)
    schedules = []
    for text in args.schedule:
        request, raw = parse_schedule(text)
        schedules.append(
            _deployments.ScheduleRequest(
                **{**request.__dict__, "parameters": convert_partial(fn, raw)}
            )
        )
    triggers = outcome_triggers(args)
    with connect(args) as client:
        bundle = pack_directory(loaded.root)
        client.ensure_bundle(bundle)
        info = client.create_deployment(
            _deployments.DeploymentRequest(
                name=args.name,
                flow_name=loaded.flow.name,
                entrypoint=entrypoint,
                bundle_sha256=bundle.sha256,
                parameter_schema=schema,
                parameters=convert_partial(fn, parse_params(args.param)),
                runner_target=args.runner_target,
                description=args.description,
                tags=tuple(args.tag),
                schedules=tuple(schedules),
                concurrency=args.concurrency,
                concurrency_overflow=args.concurrency_overflow,
                on_runner_lost=args.on_runner_lost,
                max_runner_resumes=args.max_runner_resumes,
                triggers=triggers,
                flow_concurrency=loaded.flow.concurrency,
            )
        )
    print(f"Deployed {info.name} version {info.version} ({info.flow_name}, bundle "
          f"{info.bundle_sha256[:12]})")  # fmt: skip
    print("\n".join(schedule_lines(info)))
    print(f"Run it with: meridian deployments run {info.name}")
    return 0


def schedule_lines(info: _deployments.DeploymentInfo) -> list[str]:
    """Each schedule and its next fire times (``deploy`` and ``deployments show``)."""
    if not info.schedules:
        return ["Schedules   none (runs start by meridian deployments run, webhooks or triggers)"]
    lines = ["Schedules"]
    for s in info.schedules:
        state = " (paused)" if s.paused or info.paused else ""
        lines.append(f"  {s.schedule_id}  {s.description}  {_options(s)}{state}")
        if s.parameters:
            lines.append(f"      params: {json.dumps(s.parameters, sort_keys=True)}")
        for moment in s.next_fires:
            lines.append(f"      next: {format_datetime(moment)}")
    return lines


def _options(s: _deployments.ScheduleInfo) -> str:
    """The schedule's catch-up policy and jitter, in the ``--schedule`` words."""
    text = f"catch-up {s.catch_up}"
    if s.catch_up == "latest":
        text += f" (window {format_duration(s.catch_up_window_s)})"
    elif s.catch_up == "all":
        text += f" (window {format_duration(s.catch_up_window_s)}, max-runs {s.max_catch_up_runs})"
    if s.jitter_s:
        text += f", jitter {format_duration(s.jitter_s)}"
    return text


def format_duration(seconds: float) -> str:
    """Seconds in the largest unit that holds them whole: 86400 -> 1d, 300 -> 5m, 7.5 -> 7.5s."""
    for unit in ("d", "h", "m"):
        if seconds and seconds % _UNITS[unit] == 0:
            return f"{seconds / _UNITS[unit]:g}{unit}"
    return f"{seconds:g}s"
