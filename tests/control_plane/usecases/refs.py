"""Builders for tests of stored results (references) against a real store: an agent finishes a
step with a reference to its site's store, and later calls name that reference as input."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json
from collections.abc import Sequence

from control_plane.orchestration.values import Effects, StepSubmission
from control_plane.store.db import Store
from control_plane.store.models import AttemptRow
from control_plane.usecases.attempts import apply_reports
from control_plane.usecases.runs import create_run
from meridian.core.resultref import REF_MARKER, ResultRef
from tests.control_plane.usecases.helpers import (
    T0,
    attempts,
    holder,
    report,
    run_at,
    schedule,
    spec,
    submit,
)

# What agent a1 (aws-demo) stores: a 300 MiB Parquet file in its S3 store.
REF = ResultRef(
    environment="aws-demo",
    store="s3-main",
    uri="s3://acme-results/runs/r/extract/a/result",
    size=300 * 1024 * 1024,
    sha256="1a2b" + "0" * 60,
    serializer="parquet",
)
STORES = ("s3-main", "scratch")
_SEQ = itertools.count(1)  # agents' report numbers only ever grow


def finish(
    store: Store,
    attempt: AttemptRow,
    *,
    ref_json: str,
    stores: Sequence[str] = STORES,
    result_json: str = "",
    now: dt.datetime = T0,
) -> Effects:
    """The holding agent starts ``attempt`` and finishes it with ``ref_json`` as its result;
    the effects of applying its reports."""
    running = report(attempt, next(_SEQ), "running", at=now)
    finished = report(
        attempt,
        next(_SEQ),
        "finished",
        at=now,
        outcome="SUCCEEDED",
        result_ref_json=ref_json,
        result_json=result_json,
    )
    _, effects = run_at(
        store, now, apply_reports, holder(attempt), [running, finished], result_stores=stores
    )
    return effects


def produce(store: Store, run_id: str, key: str = "extract#1", ref: ResultRef = REF) -> str:
    """A step on a1 (cloud=aws) whose result stayed in aws-demo's store; its step run id."""
    step_id = submit(store, run_id, key=key, target="cloud=aws")
    schedule(store)
    finish(store, attempts(store, step_id)[0], ref_json=ref.to_json())
    return step_id


def consumer(
    key: str = "load#1", refs: Sequence[ResultRef] = (REF,), **spec_overrides: object
) -> StepSubmission:
    """A call whose inputs pass ``refs`` (markers in the inputs, listed in input_refs)."""
    inputs = {"args": [{REF_MARKER: r.to_value()} for r in refs], "kwargs": {}}
    return StepSubmission(
        key=key,
        spec=spec(name="load", **spec_overrides),
        inputs_json=json.dumps(inputs),
        input_refs=tuple(refs),
    )


def scoped_run(store: Store, *scope: str) -> str:
    """A RUNNING run triggered by a token scoped to ``scope``."""
    run, _ = run_at(
        store,
        T0,
        create_run,
        flow_name="etl",
        entrypoint="flows.py:etl",
        parameters_json="{}",
        bundle_sha256="b" * 64,
        trigger="manual",
        scope=scope,
    )
    return run.id


def changed(ref: ResultRef, **fields: object) -> ResultRef:
    return dataclasses.replace(ref, **fields)  # type: ignore[arg-type]
