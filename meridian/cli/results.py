"""``meridian results get|gc``: a step's result, inline or stored at its site, and the garbage
collection of stored results no run refers to (docs/results.md).

``gc`` asks the control plane to collect (``CollectResults``): it lists every environment's
stores through a connected agent and removes the objects no run refers to.

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
from meridian.cli.render import format_size, table, to_json
from meridian.core.errors import ConflictError, NotFound, ValidationError
from meridian.core.resultref import ResultRef
from meridian.core.serializers import JSON

# A stored JSON result up to this size is printed; a larger one needs -o FILE.
MAX_PRINTED_BYTES = 1024 * 1024
_WITH_RESULT = frozenset({"COMPLETED", "CACHED"})


def register(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    results = commands.add_parser(
        "results", help="step results, inline or stored at a site", parents=parents
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

    gc = actions.add_parser(
        "gc",
        help="report and remove stored results no run refers to (admins; network)",
        description="Ask a connected agent of each environment to list its result stores, "
        "then remove the objects no run refers to (orphans: left by deleted runs, lost "
        "attempts, crashed uploads). Objects younger than --older-than are left alone (uploads "
        "in flight). Environments without a connected agent are skipped and named. Audited.",
        parents=parents,
    )
    gc.add_argument("--dry-run", action="store_true", help="report orphans, remove nothing")
    gc.add_argument("--environment", metavar="ENV", default="", help="only this environment")
    gc.add_argument(
        "--older-than",
        metavar="AGE",
        type=parse_age,
        default=3600.0,
        help="only objects at least this old, e.g. 90s, 30m, 1h (default), 7d",
    )
    gc.add_argument("--json", action="store_true", help="print JSON")
    add_client_options(gc)
    gc.set_defaults(func=cmd_gc)


_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_AGE_S = 10 * 365 * 86400


def parse_age(text: str) -> float:
    """argparse ``type=`` for ``--older-than``: seconds, or a number with s, m, h, d or w."""
    text = text.strip().lower()
    unit = _AGE_UNITS.get(text[-1:], 0)
    number = text[:-1] if unit else text
    try:
        seconds = float(number) * (unit or 1)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an age such as 90s, 30m, 1h or 7d, got {text!r}"
        ) from None
    if not 0 < seconds <= MAX_AGE_S:  # NaN fails too
        raise argparse.ArgumentTypeError(f"expected an age above 0 and up to 10 years: {text!r}")
    return seconds


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


def cmd_gc(args: argparse.Namespace) -> int:
    with connect(args) as client:
        result = client.collect_results(
            dry_run=args.dry_run, environment=args.environment, older_than_s=args.older_than
        )
    if args.json:
        print(to_json(gc_to_dict(result, dry_run=args.dry_run)))
    else:
        print(render_gc(result, dry_run=args.dry_run))
    # Errors are worth a non-zero exit (a cron job notices); a skipped environment is not.
    return 1 if any(s.errors for s in result.sweeps) else 0


def render_gc(result: models.CollectResult, *, dry_run: bool) -> str:
    lines = []
    stores = [s for s in result.sweeps if s.store]
    if stores:
        rows = [
            [s.environment, s.store, str(s.objects), str(s.orphans), format_size(s.orphan_bytes),
             "-" if dry_run else str(s.deleted)]
            for s in stores
        ]  # fmt: skip
        headers = ("ENVIRONMENT", "STORE", "LISTED", "ORPHANS", "ORPHAN SIZE", "DELETED")
        lines.append(table(headers, rows))
    elif result.sweeps or not result.skipped:
        lines.append("no stored objects listed")
    for sweep in result.sweeps:
        where = f"{sweep.environment}/{sweep.store}" if sweep.store else sweep.environment
        lines.extend(f"error ({where}): {error}" for error in sweep.errors)
    lines.extend(f"skipped {why}" for why in result.skipped)
    orphans = sum(s.orphans for s in result.sweeps)
    size = format_size(sum(s.orphan_bytes for s in result.sweeps))
    if dry_run:
        lines.append(
            f"Dry run: {orphans} orphan(s), {size}, would be removed; "
            "run without --dry-run to remove them"
        )
    else:
        deleted = sum(s.deleted for s in result.sweeps)
        lines.append(f"Removed {deleted} of {orphans} orphan(s) ({size})")
    return "\n".join(lines)


def gc_to_dict(result: models.CollectResult, *, dry_run: bool) -> dict[str, Any]:
    return {
        "dry_run": dry_run,
        "sweeps": [
            {
                "environment": s.environment,
                "store": s.store,
                "objects": s.objects,
                "orphans": s.orphans,
                "orphan_bytes": s.orphan_bytes,
                "deleted": s.deleted,
                "errors": list(s.errors),
            }
            for s in result.sweeps
        ],
        "skipped": list(result.skipped),
    }
