"""Following a step's output files line by line (they survive an agent restart)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import BinaryIO

from providers.base import LogRecord

MAX_LOG_LINE_BYTES = 16 * 1024


class FileTail:
    """Follows one log file, yielding whole lines (bounded) as they appear."""

    def __init__(self, stream: str, path: Path) -> None:
        self.stream = stream
        self.path = path
        self._fh: BinaryIO | None = None
        self._buf = b""

    def _record(self, raw: bytes) -> LogRecord:
        text = raw.decode("utf-8", errors="replace").removesuffix("\r")
        return LogRecord(
            stream="stdout" if self.stream == "stdout" else "stderr",
            text=text,
            at_unix_ms=int(time.time() * 1000),
        )

    def read(self) -> list[LogRecord]:
        if self._fh is None:
            try:
                self._fh = open(self.path, "rb")  # noqa: SIM115 - kept open across reads
            except FileNotFoundError:
                return []
        self._buf += self._fh.read()
        records = []
        while True:
            nl = self._buf.find(b"\n")
            if 0 <= nl <= MAX_LOG_LINE_BYTES:
                records.append(self._record(self._buf[:nl]))
                self._buf = self._buf[nl + 1 :]
            elif len(self._buf) > MAX_LOG_LINE_BYTES:
                cut = MAX_LOG_LINE_BYTES
                while cut > 0 and (self._buf[cut] & 0xC0) == 0x80:
                    cut -= 1  # do not split a UTF-8 character across two records
                records.append(self._record(self._buf[:cut]))
                self._buf = self._buf[cut:]
            else:
                return records

    def finish(self) -> list[LogRecord]:
        records = self.read()
        if self._buf:
            records.append(self._record(self._buf))
            self._buf = b""
        return records

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
