"""Following the output files Slurm writes for a job (``--output`` / ``--error``).

Slurm appends to plain files in the job dir on the shared filesystem, so logs are read by
polling the files: no Slurm API is involved, and it works the same after an agent restart.
"""

from __future__ import annotations

import os
from pathlib import Path

from providers.shared.filetail import FileTail

TAIL_LINES = 20
TAIL_BYTES = 4 * 1024


class Tail(FileTail):
    """Follows one file from its start, yielding whole lines (bounded) as they appear."""

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
