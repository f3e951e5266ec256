"""Following a step's output files line by line (they survive an agent restart).

Reading is linear in the size of the file: each read appends at most ``READ_CHUNK_BYTES`` to
one buffer, lines are cut out by moving an offset (never by re-slicing the rest of the buffer),
and the consumed prefix is dropped once per read. A flood of output is therefore followed at
the speed of the disk, in bounded memory, by as many reads as it takes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import BinaryIO

from providers.base import LogRecord

MAX_LOG_LINE_BYTES = 16 * 1024
READ_CHUNK_BYTES = 1024 * 1024


class FileTail:
    """Follows one log file, yielding whole lines (bounded) as they appear."""

    def __init__(self, stream: str, path: Path, read_chunk_bytes: int = READ_CHUNK_BYTES) -> None:
        self.stream = stream
        self.path = path
        self._fh: BinaryIO | None = None
        self._buf = bytearray()
        self._chunk = read_chunk_bytes
        self.more = False  # the last read stopped at the chunk size: there is more to read

    def _record(self, raw: bytes | bytearray, now_ms: int) -> LogRecord:
        text = bytes(raw).decode("utf-8", errors="replace").removesuffix("\r")
        return LogRecord(
            stream="stdout" if self.stream == "stdout" else "stderr",
            text=text,
            at_unix_ms=now_ms,
        )

    def read(self) -> list[LogRecord]:
        """The complete lines that appeared since the last read (at most one chunk's worth)."""
        if self._fh is None:
            try:
                self._fh = open(self.path, "rb")  # noqa: SIM115 - kept open across reads
            except FileNotFoundError:
                return []
        data = self._fh.read(self._chunk)
        self.more = len(data) == self._chunk
        self._buf += data
        return self._cut(final=False)

    def _cut(self, *, final: bool) -> list[LogRecord]:
        buf, now_ms = self._buf, int(time.time() * 1000)
        records: list[LogRecord] = []
        start, end = 0, len(buf)
        while start < end:
            nl = buf.find(b"\n", start, min(end, start + MAX_LOG_LINE_BYTES + 1))
            if nl >= 0:
                records.append(self._record(buf[start:nl], now_ms))
                start = nl + 1
            elif end - start > MAX_LOG_LINE_BYTES:
                cut = start + MAX_LOG_LINE_BYTES
                while cut > start and (buf[cut] & 0xC0) == 0x80:
                    cut -= 1  # do not split a UTF-8 character across two records
                records.append(self._record(buf[start:cut], now_ms))
                start = cut
            elif final:
                records.append(self._record(buf[start:end], now_ms))
                start = end
            else:
                break
        del buf[:start]  # one move per read: linear overall
        return records

    def finish(self) -> list[LogRecord]:
        """Everything left, including a last line without its newline."""
        records = self.read()
        while self.more:
            records.extend(self.read())
        records.extend(self._cut(final=True))
        return records

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
