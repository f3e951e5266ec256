"""Work directories the agent no longer needs, removed when it starts.

Each attempt works in ``<data dir>/work/<attempt id>`` (its spec, its inputs as they arrive,
its result before it is stored). A finished attempt's big files are deleted once its report is
journaled, but an agent killed mid-attempt leaves the whole directory behind, a partly
transferred input included (hundreds of MB for a large one): the control plane retries such an
attempt as a new one, in a new directory. So at start, once the attempts whose handles survived
are re-attached, every attempt directory not held is removed. Hosted runners' directories
(``work/runners``), the health probe and anything not named like an attempt are left alone;
a symlink is never followed.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Collection
from pathlib import Path

log = logging.getLogger(__name__)

# Attempt ids are UUIDs (the control plane's ``new_id``): nothing else under work/ matches.
_ATTEMPT_DIR = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def remove_stale_work_dirs(work_root: Path, held: Collection[str]) -> int:
    """Remove the directories of attempts under ``work_root`` other than ``held``; returns how
    many were removed. Blocking (call it off the event loop)."""
    try:
        entries = list(os.scandir(work_root))
    except FileNotFoundError:
        return 0
    removed = 0
    for entry in entries:
        if entry.name in held or not _ATTEMPT_DIR.fullmatch(entry.name):
            continue
        if entry.is_symlink() or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            # rmtree does not follow symlinks inside the tree (it unlinks them).
            shutil.rmtree(entry.path)
        except OSError as exc:
            log.warning("cannot remove the work dir of attempt %s: %s", entry.name, exc)
            continue
        removed += 1
    if removed:
        log.info("removed the work dirs of %d attempt(s) this agent no longer holds", removed)
    return removed
