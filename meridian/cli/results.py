"""``meridian results get``: a step's result, inline or stored at its site (docs/results.md).

``get`` reads the run (``GetRun``) to find the step: an inline result is printed (or written
with ``-o``); a stored one is downloaded through the control plane (``FetchResult``, relayed
from an agent of the producing environment, digest checked) to ``-o FILE``, or printed when it
is small JSON.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from meridian import models
from meridian.cli.common import add_client_options, connect
from meridian.core.errors import ConflictError, NotFound, ValidationError
from meridian.core.resultref import ResultRef
from meridian.core.serializers import JSON

# A stored JSON result up to this size is printed; a larger one needs -o FILE.
MAX_PRINTED_BYTES = 1024 * 1024
_WITH_RESULT = frozenset({"COMPLETED", "CACHED"})


def register(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    results = commands.add_parser(
        "results", help="step results, also those stored at their site", parents=parents
    )
    actions = results.add_subparsers(dest="action", metavar="ACTION", required=True)
    get = actions.add_parser(
        "get",
        help="print a step's result, or write it to a file (over the network)",
        description="Print a step's result, or write its bytes to FILE. A result stored at "
        "its site is downloaded through the control plane and checked against its sha256.",
        parents=parents,
    )
    get.add_argument("run", metavar="RUN", help="run id or a unique prefix of it")
    get.add_argument("step", metavar="STEP", help="the step's key, e.g. extract#1")
    get.add_argument(
        "-o", "--output", metavar="FILE", type=Path, help="write the result's bytes to FILE"
    )
    add_client_options(get)
    get.set_defaults(func=cmd_get)


def find_step(detail: models.RunDetail, key: str) -> models.StepRunDetail:
    for step in detail.steps:
        if step.key == key:
            return step
    known = ", ".join(s.key for s in detail.steps[:10]) or "none"
    raise NotFound(f"run {detail.flow_run_id} has no step {key!r} (its steps: {known})")


def cmd_get(args: argparse.Namespace) -> int:
    with connect(args) as client:
        detail = client.get_run(args.run)
        step = find_step(detail, args.step)
        if step.state not in _WITH_RESULT:
            raise ConflictError(f"step {step.key!r} has no result: it is {step.state}")
        if not step.result_ref_json:
            return _inline(step, args.output)
        ref = ResultRef.from_json(step.result_ref_json)
        if args.output is not None:
            fetched = client.fetch_result(detail.flow_run_id, step.key, args.output, expected=ref)
            print(
                f"wrote {fetched.size} bytes ({ref.serializer}, sha256 {fetched.sha256}) to "
                f"{fetched.path}",
                file=sys.stderr,
            )
            return 0
        _check_printable(step.key, ref)
        with tempfile.TemporaryDirectory(prefix="meridian-result-") as directory:
            fetched = client.fetch_result(
                detail.flow_run_id, step.key, Path(directory) / "result", expected=ref
            )
            sys.stdout.write(fetched.path.read_text(encoding="utf-8") + "\n")
    return 0


def _inline(step: models.StepRunDetail, output: Path | None) -> int:
    """A result the control plane stores itself (JSON, possibly sealed): print or write it."""
    if output is None:
        print(step.result_json)
    else:
        output.write_text(step.result_json, encoding="utf-8")
        print(f"wrote {len(step.result_json.encode())} bytes (json) to {output}", file=sys.stderr)
    return 0


def _check_printable(key: str, ref: ResultRef) -> None:
    if ref.serializer != JSON or ref.sealed or ref.size > MAX_PRINTED_BYTES:
        what = "sealed " if ref.sealed else ""
        raise ValidationError(
            f"the result of step {key!r} is {ref.size} bytes of {what}{ref.serializer}, stored "
            f"in {ref.store} ({ref.environment}); write it to a file with -o FILE"
        )
