"""Following the output files Slurm writes for a job (``--output`` / ``--error``).

Slurm appends to plain files in the job dir on the shared filesystem, so logs are read by
polling the files: no Slurm API is involved, and it works the same after an agent restart.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import BinaryIO, Literal

from providers.base import LogRecord

MAX_LINE_BYTES = 16 * 1024
TAIL_LINES = 20
TAIL_BYTES = 4 * 1024


class Tail:
    """Follows one file from its start, yielding whole lines (bounded) as they appear."""

    def __init__(self, stream: Literal["stdout", "stderr"], path: Path) -> None:
        self.stream: Literal["stdout", "stderr"] = stream
        self.path = path
        self._fh: BinaryIO | None = None
        self._buf = b""

    def _record(self, raw: bytes) -> LogRecord:
        text = raw.decode("utf-8", errors="replace").removesuffix("\r")
        return LogRecord(stream=self.stream, text=text, at_unix_ms=int(time.time() * 1000))

    def read(self) -> list[LogRecord]:
        """The complete lines written since the last read."""
        if self._fh is None:
            try:
                self._fh = open(self.path, "rb")  # noqa: SIM115 - kept open across reads
            except FileNotFoundError:
                return []  # the job has not started yet
        self._buf += self._fh.read()
        records = []
        while True:
            nl = self._buf.find(b"\n")
            if 0 <= nl <= MAX_LINE_BYTES:
                records.append(self._record(self._buf[:nl]))
                self._buf = self._buf[nl + 1 :]
            elif len(self._buf) > MAX_LINE_BYTES:
                cut = MAX_LINE_BYTES
                while cut > 0 and (self._buf[cut] & 0xC0) == 0x80:
                    cut -= 1  # never split a UTF-8 character across two records
                records.append(self._record(self._buf[:cut]))
                self._buf = self._buf[cut:]
            else:
                return records

    def finish(self) -> list[LogRecord]:
        """The remaining lines, including an unterminated last one."""
        records = self.read()
        if self._buf:
            records.append(self._record(self._buf))
            self._buf = b""
        return records

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    @staticmethod
    def last_lines(path: Path) -> str:
        """The last few lines of ``path`` (for failure messages), or "" when unreadable."""
        try:
            with open(path, "rb") as fh:
                fh.seek(max(0, os.fstat(fh.fileno()).st_size - TAIL_BYTES))
                raw = fh.read()
        except OSError:
            return ""
        return "\n".join(raw.decode("utf-8", errors="replace").splitlines()[-TAIL_LINES:])
