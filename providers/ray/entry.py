"""Runs on the Ray cluster: the job entrypoint wrapper that keeps stdout and stderr apart.

Ray writes a job's stdout and stderr into one driver log, so ``get_job_logs`` cannot tell them
apart. ``python -m providers.ray.entry -- ARGV...`` runs ``ARGV`` with both streams piped and
re-emits them on its own stdout, each stderr line prefixed with ``STDERR_TAG``; the provider
strips the tag when it reads the log. The wrapper exits with the command's exit code (128 + N
when a signal N ended it, as a shell would). Ray stops a job by signalling its whole process
group, which includes the command, so no signal forwarding is needed. Standard library only.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import IO

STDERR_TAG = "::meridian-stderr::"


def _pump(source: IO[bytes], sink: IO[bytes], prefix: bytes, lock: threading.Lock) -> None:
    for line in iter(source.readline, b""):
        if not line.endswith(b"\n"):
            line += b"\n"  # the tag of the next line must start a line of its own
        with lock:  # whole lines only: the two pumps never interleave inside a line
            sink.write(prefix + line)
            sink.flush()


def main(argv: Sequence[str]) -> int:
    args = list(argv[1:] if argv and argv[0] == "--" else argv)
    if not args:
        print("usage: python -m providers.ray.entry -- COMMAND [ARG...]", file=sys.stderr)
        return 2
    try:
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    except OSError as exc:
        print(f"meridian: cannot start {args[0]!r}: {exc}", file=sys.stderr)
        return 127
    assert proc.stdout is not None and proc.stderr is not None
    lock = threading.Lock()
    out = sys.stdout.buffer
    errors = threading.Thread(target=_pump, args=(proc.stderr, out, STDERR_TAG.encode(), lock))
    errors.start()
    _pump(proc.stdout, out, b"", lock)
    errors.join()
    rc = proc.wait()
    return rc if rc >= 0 else 128 - rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
