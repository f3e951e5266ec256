"""``meridian results get|gc``: a step's result, inline or stored at its site, and the garbage
collection of stored results no run refers to (docs/results.md).

``gc`` asks the control plane to collect (``CollectResults``): it lists every environment's
stores through a connected agent and removes the objects no run refers to.

``get`` reads the run (``GetRun``) to find the step: an inline result is printed (or written
with ``-o``); a stored one is downloaded through the control plane (``FetchResult``, relayed
from an agent of the producing environment, digest checked) to ``-o FILE`` (``-o -``: stdout),
or printed when it is small JSON. A sealed one is opened as ``ResultRef.load()`` opens it, with
the key group from ``MERIDIAN_SEAL_KEYS``; without it the ciphertext is written, and said so.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from meridian import models
from meridian.cli.common import add_client_options, connect
from meridian.cli.render import format_size, table, to_json
from meridian.core.errors import ConflictError, NotFound, ValidationError
from meridian.core.resultref import ResultRef
from meridian.core.sealedfile import open_file, sealed_file_group
from meridian.core.sealing import ENV_KEYS, KeyRing
from meridian.core.serializers import JSON

# A stored JSON result up to this size is printed; a larger one needs -o FILE.
MAX_PRINTED_BYTES = 1024 * 1024
STDOUT = "-"  # -o - writes the bytes to stdout
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
        "-o",
        "--output",
        metavar="FILE",
        type=Path,
        help="write the result's bytes to FILE (- for stdout); a sealed result is opened "
        f"with ${ENV_KEYS} when it holds its key group, else written as ciphertext",
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
    output: Path | None = args.output
    to_stdout = output is not None and str(output) == STDOUT
    if output is not None and not to_stdout:
        _check_writable(output)  # before anything is downloaded
    with connect(args) as client:
        detail = client.get_run(args.run)
        step = find_step(detail, args.step)
        if step.state not in _WITH_RESULT:
            raise ConflictError(f"step {step.key!r} has no result: it is {step.state}")
        if not step.result_ref_json:
            return _inline(step, None if to_stdout else output)
        ref = ResultRef.from_json(step.result_ref_json)
        if output is None:
            _check_printable(step.key, ref)
        with tempfile.TemporaryDirectory(prefix="meridian-result-") as directory:
            # Printed or piped bytes are checked in full first; a file is written atomically
            # next to its destination (by the download, or by opening the sealed bytes).
            scratch = Path(directory) / "result"
            dest = scratch if output is None or to_stdout else output
            download = dest.with_name(f".{dest.name}.sealed") if ref.sealed else dest
            try:
                fetched = client.fetch_result(detail.flow_run_id, step.key, download, expected=ref)
                note = _open_sealed(download, dest, ref) if ref.sealed else ""
            finally:
                if download != dest:
                    download.unlink(missing_ok=True)
            if output is None:
                sys.stdout.write(dest.read_text(encoding="utf-8") + "\n")
                return 0
            size = dest.stat().st_size
            if to_stdout:
                _to_stdout(dest)
    where = "stdout" if to_stdout else str(output)
    digest = "" if note else f", sha256 {fetched.sha256}"
    print(f"wrote {size} bytes ({ref.serializer}{digest}) to {where}", file=sys.stderr)
    if note:
        print(note, file=sys.stderr)
    return 0


def _check_writable(output: Path) -> None:
    """Refuse an ``-o FILE`` that cannot be written, naming what is wrong with it."""
    parent = output.parent
    if not parent.is_dir():
        raise ValidationError(
            f"cannot write {output}: the directory {parent} does not exist (create it first)"
        )
    if output.is_dir():
        raise ValidationError(f"cannot write {output}: it is a directory; name a file")


def _open_sealed(sealed: Path, dest: Path, ref: ResultRef) -> str:
    """Open the sealed result ``sealed`` into ``dest`` with ``MERIDIAN_SEAL_KEYS``, as
    ``ResultRef.load()`` does; without its key group write the ciphertext and say so."""
    group = sealed_file_group(sealed)
    keys = KeyRing.from_env()
    if group not in keys:
        sealed.replace(dest)
        return (
            f"sealed with key group {group!r}: the file holds ciphertext (sha256 {ref.sha256}), "
            f"not the {ref.serializer} result; set {ENV_KEYS}={group}=file:KEY_FILE to open it"
        )
    # The bytes were checked against the reference's digest, so any producer the key group
    # sealed is accepted (a cached result names another run), as in ResultRef.save().
    info = open_file(keys, sealed, dest, None, None)
    return f"opened the sealed result with key group {group!r} (sha256 {info.plaintext_sha256})"


def _to_stdout(path: Path) -> None:
    """Copy the file's bytes to stdout, unchanged (binary)."""
    sys.stdout.flush()
    with path.open("rb") as source:
        shutil.copyfileobj(source, sys.stdout.buffer)
    sys.stdout.buffer.flush()


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
