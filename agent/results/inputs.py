"""Materializing the result references a step takes as inputs, before the step starts.

(Being written: the fetcher protocol comes first so other modules can build on it.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from meridian.core.resultref import ResultRef


class Fetcher(Protocol):
    """Downloads a result of another environment through the control plane (a transfer).

    ``agent.transfers.ResultFetcher`` implements it: it writes ``dest`` atomically and checks
    the size and sha256 of the reference before the file appears.
    """

    async def fetch(
        self, attempt_id: str, fencing_token: int, ref: ResultRef, dest: Path
    ) -> None: ...
