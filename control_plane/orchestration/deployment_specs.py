"""A deployment version's spec: validated, normalized, and stored as a plain JSON object.

``deployment_versions.spec`` holds :meth:`DeploymentSpec.to_json` — our own dict, not the
protobuf's JSON mapping, so the stored form does not change with field renames on the wire:

``{"name", "flow_name", "entrypoint", "bundle_sha256", "description", "tags",
"runner_target", "parameters" (JSON object), "parameter_schema" (meridian/core/paramschema.py),
"schedules": [{"schedule_id", "definition" (schedule_codec JSON), "parameters", "catch_up",
"catch_up_window_s", "max_catch_up_runs", "jitter_s", "paused"}], "concurrency",
"concurrency_overflow", "on_runner_lost", "max_runner_resumes", "triggers":
[{"upstream_deployment", "states", "run_id_parameter", "result_parameter"}],
"flow_concurrency" (the flow's named limits; absent in specs stored before it)}``

Readers (the schedule evaluator, the runner assignment, outcome triggers) use
:func:`spec_from_json`. Pure: what needs the store (does the bundle exist, which deployments
exist) is checked by ``usecases/deployments.py``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from control_plane.orchestration import catchup, limits, runners, schedule_codec, schedules
from meridian.core import paramschema
from meridian.core.errors import ValidationError
from meridian.core.selectors import parse_selector

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
MAX_DESCRIPTION = 2000
MAX_TAGS = 32
MAX_TAG = 64
MAX_SCHEDULES = 20
MAX_TRIGGERS = 20
# Outcome-triggered runs in one chain (each triggered by the previous one's end): beyond it a
# trigger is refused, so a cycle that escaped the deploy-time check still stops.
MAX_OUTCOME_CHAIN = 20
MAX_CONCURRENCY = 10_000
MAX_FLOW_LIMITS = 8  # named limits one flow may take (as for a step)
DEFAULT_WINDOW_S = 86_400.0
DEFAULT_MAX_CATCH_UP_RUNS = 10
OVERFLOW = ("queue", "skip")
RUN_END_STATES = ("COMPLETED", "FAILED", "CANCELLED", "CRASHED")
_ENTRYPOINT_RE = re.compile(r"[^\x00:]{1,1000}\.py:[A-Za-z_][A-Za-z0-9_]{0,199}")
_SHA_RE = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ScheduleSpec:
    schedule_id: str
    definition: dict[str, Any]
    parameters: dict[str, Any]
    catch_up: str = "skip"
    catch_up_window_s: float = DEFAULT_WINDOW_S
    max_catch_up_runs: int = DEFAULT_MAX_CATCH_UP_RUNS
    jitter_s: float = 0.0
    paused: bool = False

    def schedule(self) -> schedules.Schedule:
        return schedule_codec.decode_schedule(self.definition)

    def policy(self) -> catchup.CatchUpPolicy:
        return catchup.CatchUpPolicy(
            mode=catchup.CatchUp(self.catch_up),
            window=dt.timedelta(seconds=self.catch_up_window_s),
            max_runs=self.max_catch_up_runs,
        )


@dataclass(frozen=True)
class OutcomeTrigger:
    upstream_deployment: str
    states: tuple[str, ...] = ("COMPLETED",)
    run_id_parameter: str = ""
    result_parameter: str = ""


@dataclass(frozen=True)
class DeploymentSpec:
    name: str
    flow_name: str
    entrypoint: str
    bundle_sha256: str
    parameter_schema: dict[str, Any]
    description: str = ""
    tags: tuple[str, ...] = ()
    runner_target: str = ""
    parameters: dict[str, Any] = dataclasses.field(default_factory=dict)
    schedules: tuple[ScheduleSpec, ...] = ()
    concurrency: int = 0
    concurrency_overflow: str = "queue"
    on_runner_lost: str = "resume"
    max_runner_resumes: int = runners.DEFAULT_MAX_RUNNER_RESUMES
    triggers: tuple[OutcomeTrigger, ...] = ()
    # The flow's @flow(concurrency=...) at deploy time: named limits each run holds.
    flow_concurrency: tuple[str, ...] = ()

    def runner_policy(self) -> runners.RunnerPolicy:
        return runners.RunnerPolicy(
            runners.OnRunnerLost(self.on_runner_lost), self.max_runner_resumes
        )

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["tags"] = list(self.tags)
        data["flow_concurrency"] = list(self.flow_concurrency)
        data["triggers"] = [{**t, "states": list(t["states"])} for t in data["triggers"]]
        data["schedules"] = list(data["schedules"])
        return data


def spec_from_json(data: Mapping[str, Any]) -> DeploymentSpec:
    """A stored spec back as a value (already validated when it was stored)."""
    fields = {f.name for f in dataclasses.fields(DeploymentSpec)}
    values = {k: v for k, v in data.items() if k in fields}
    values["tags"] = tuple(values.get("tags", ()))
    values["flow_concurrency"] = tuple(values.get("flow_concurrency", ()))
    values["schedules"] = tuple(ScheduleSpec(**s) for s in values.get("schedules", ()))
    values["triggers"] = tuple(
        OutcomeTrigger(**{**t, "states": tuple(t.get("states", ()))})
        for t in values.get("triggers", ())
    )
    return DeploymentSpec(**values)


def validate_name(name: str, what: str = "deployment name") -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ValidationError(
            f"{what} {str(name)[:120]!r} must be 1-100 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


def validate_spec(spec: DeploymentSpec) -> DeploymentSpec:
    """The spec checked field by field and normalized (parameters as the schema normalizes
    them, schedules re-encoded by the codec); a ValidationError names the first bad field."""
    validate_name(spec.name)
    if not spec.flow_name.isidentifier() or len(spec.flow_name) > 200:
        raise ValidationError(f"flow name {spec.flow_name[:120]!r} must be a Python identifier")
    if not _ENTRYPOINT_RE.fullmatch(spec.entrypoint):
        raise ValidationError(
            f"entrypoint {spec.entrypoint[:120]!r} must look like path/file.py:flow"
        )
    if not _SHA_RE.fullmatch(spec.bundle_sha256):
        raise ValidationError("bundle_sha256 must be 64 lowercase hex digits")
    if len(spec.description) > MAX_DESCRIPTION:
        raise ValidationError(f"description must be at most {MAX_DESCRIPTION} characters")
    bad = next((c for c in spec.description if c != "\n" and not c.isprintable()), None)
    if bad is not None:
        # As for tags and webhook names: what is shown on a terminal must not drive it.
        raise ValidationError(
            f"description must be printable text and newlines, not {bad!r} (a control character)"
        )
    _check_tags(spec.tags)
    if spec.runner_target:
        parse_selector(spec.runner_target)
    paramschema.check_schema(spec.parameter_schema)
    defaults = _defaults(spec.parameter_schema, spec.parameters)
    if not 0 <= spec.concurrency <= MAX_CONCURRENCY:
        raise ValidationError(f"concurrency must be between 0 (unlimited) and {MAX_CONCURRENCY}")
    if spec.concurrency_overflow not in OVERFLOW:
        raise ValidationError(
            f"concurrency overflow must be queue or skip, got {spec.concurrency_overflow!r}"
        )
    if spec.on_runner_lost not in ("resume", "fail"):
        raise ValidationError(f"on_runner_lost must be resume or fail, got {spec.on_runner_lost!r}")
    runners.validate_runner_policy(spec.runner_policy())
    if len(spec.flow_concurrency) > MAX_FLOW_LIMITS:
        raise ValidationError(f"a flow takes at most {MAX_FLOW_LIMITS} concurrency limits")
    flow_limits = limits.acquisition_order(spec.flow_concurrency)
    checked = tuple(_schedule(spec, s, defaults) for s in spec.schedules)
    if len(checked) > MAX_SCHEDULES:
        raise ValidationError(f"at most {MAX_SCHEDULES} schedules per deployment")
    ids = [s.schedule_id for s in checked if s.schedule_id]
    if len(ids) != len(set(ids)):
        raise ValidationError("schedule ids must be unique within a deployment")
    triggers = tuple(_trigger(spec, t) for t in spec.triggers)
    if len(triggers) > MAX_TRIGGERS:
        raise ValidationError(f"at most {MAX_TRIGGERS} outcome triggers per deployment")
    upstreams = [t.upstream_deployment for t in triggers]
    repeated = sorted({u for u in upstreams if upstreams.count(u) > 1})
    if repeated:
        # One upstream run would fire both with the same key: the second would do nothing.
        raise ValidationError(
            f"outcome triggers name upstream deployment {repeated[0]} more than once: "
            "give all its states in one trigger"
        )
    return dataclasses.replace(
        spec,
        parameters=defaults,
        schedules=checked,
        triggers=triggers,
        flow_concurrency=flow_limits,
    )


def _check_tags(tags: Sequence[str]) -> None:
    if len(tags) > MAX_TAGS:
        raise ValidationError(f"at most {MAX_TAGS} tags")
    for tag in tags:
        if not tag or len(tag) > MAX_TAG or not tag.isprintable() or " " in tag:
            raise ValidationError(
                f"tag {tag[:80]!r} must be 1-{MAX_TAG} printable characters without spaces"
            )


def _defaults(schema: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """Default parameters checked for names and types; required ones may be left to each
    schedule or trigger (checked there, merged, by :func:`merged_parameters`)."""
    optional = {
        **schema,
        "parameters": [dict(e, required=False) for e in schema.get("parameters", ())],
    }
    try:
        return paramschema.validate(optional, values)
    except ValidationError as exc:
        raise ValidationError(f"default parameters: {exc}") from None


def merged_parameters(schema: Mapping[str, Any], *layers: Mapping[str, Any]) -> dict[str, Any]:
    """Layers merged left to right (defaults, then a schedule's or a trigger's own), checked
    as a complete call: unknown names, types and missing required parameters."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer)
    return paramschema.validate(schema, merged)


def _schedule(spec: DeploymentSpec, s: ScheduleSpec, defaults: Mapping[str, Any]) -> ScheduleSpec:
    where = f"schedule {s.schedule_id or '(new)'}"
    if s.schedule_id:
        try:
            schedules.slot_key(s.schedule_id, dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
        except ValidationError as exc:
            raise ValidationError(f"{where}: {exc}") from None
    try:
        definition = schedule_codec.encode_schedule(schedule_codec.decode_schedule(s.definition))
        mode = s.catch_up or "skip"
        if mode not in ("skip", "latest", "all"):
            raise ValidationError(f"catch-up must be skip, latest or all, got {mode!r}")
        normalized = dataclasses.replace(
            s,
            definition=definition,
            catch_up=mode,
            catch_up_window_s=float(s.catch_up_window_s or DEFAULT_WINDOW_S),
            max_catch_up_runs=int(s.max_catch_up_runs),  # 0 is refused, not a default
            jitter_s=float(s.jitter_s),
        )
        catchup.validate_policy(normalized.policy())
        schedules.jitter("x", dt.timedelta(seconds=normalized.jitter_s))
        params = _defaults(spec.parameter_schema, s.parameters)
        merged_parameters(spec.parameter_schema, defaults, params)
    except ValidationError as exc:
        raise ValidationError(f"{where}: {exc}") from None
    except (OverflowError, ValueError) as exc:
        raise ValidationError(f"{where}: {exc}") from None
    return dataclasses.replace(normalized, parameters=params)


def _trigger(spec: DeploymentSpec, t: OutcomeTrigger) -> OutcomeTrigger:
    validate_name(t.upstream_deployment, "upstream deployment")
    states = tuple(dict.fromkeys(s.upper() for s in t.states)) or ("COMPLETED",)
    bad = [s for s in states if s not in RUN_END_STATES]
    if bad:
        raise ValidationError(
            f"outcome trigger on {t.upstream_deployment}: state {bad[0]!r} is not one of "
            + ", ".join(RUN_END_STATES)
        )
    names = paramschema.parameter_names(spec.parameter_schema)
    for label, param in (
        ("upstream run id", t.run_id_parameter),
        ("upstream result", t.result_parameter),
    ):
        if param and param not in names and not spec.parameter_schema.get("accepts_any"):
            raise ValidationError(
                f"outcome trigger on {t.upstream_deployment}: the {label} goes to parameter "
                f"{param!r}, which the flow does not take (it takes: {', '.join(names) or 'none'})"
            )
    if t.run_id_parameter:
        _check_takes_run_id(spec.parameter_schema, t)
    return dataclasses.replace(t, states=states)


_SAMPLE_RUN_ID = "00000000-0000-0000-0000-000000000000"


def _check_takes_run_id(schema: Mapping[str, Any], t: OutcomeTrigger) -> None:
    """The run-id parameter must take a string: otherwise every trigger would be refused."""
    entry = next((e for e in schema.get("parameters", ()) if e["name"] == t.run_id_parameter), None)
    if entry is None:
        return  # the flow takes **kwargs: any value
    try:
        paramschema.validate({**schema, "parameters": [dict(entry, required=False)]},
                             {t.run_id_parameter: _SAMPLE_RUN_ID})  # fmt: skip
    except ValidationError:
        raise ValidationError(
            f"outcome trigger on {t.upstream_deployment}: parameter {t.run_id_parameter!r} is "
            f"{paramschema.type_name(entry['type'])}, so it cannot take the upstream run's id "
            "(a string)"
        ) from None


def trigger_cycle(name: str, upstreams: Mapping[str, Sequence[str]]) -> list[str] | None:
    """A cycle of outcome triggers through deployment ``name``, in the order runs would fire
    (``["ping", "pong", "ping"]``: a run of ping ends, pong runs, its end runs ping), or None.

    ``upstreams`` maps each deployment to the deployments whose runs' outcome triggers it."""
    downstreams: dict[str, list[str]] = {}
    for downstream, ups in upstreams.items():
        for up in ups:
            downstreams.setdefault(up, []).append(downstream)
    # Iterative depth-first search (no recursion limit) for a path from name back to name.
    path = [name]
    pending = [iter(sorted(downstreams.get(name, ())))]
    seen = {name}
    while pending:
        step = next(pending[-1], None)
        if step is None:
            pending.pop()
            path.pop()
        elif step == name:
            return [*path, name]
        elif step not in seen:
            seen.add(step)
            path.append(step)
            pending.append(iter(sorted(downstreams.get(step, ()))))
    return None
