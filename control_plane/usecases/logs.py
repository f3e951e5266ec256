"""Storing the output lines agents report for an attempt (read back by ``runs logs``)."""

from __future__ import annotations

from collections.abc import Sequence

from control_plane.orchestration.values import LogLineIn
from control_plane.store.models import AttemptRow, LogRow, StepRunRow
from control_plane.store.tx import Tx

MAX_LOG_LINE = 16 * 1024
MAX_STREAM_NAME = 16


def store_log_lines(
    tx: Tx, attempt: AttemptRow, step: StepRunRow, lines: Sequence[LogLineIn]
) -> None:
    tx.session.add_all(
        LogRow(
            flow_run_id=attempt.flow_run_id,
            step_run_id=step.id,
            attempt_id=attempt.id,
            step_key=step.key,
            attempt_number=attempt.number,
            stream=line.stream[:MAX_STREAM_NAME],
            text=line.text[:MAX_LOG_LINE],
            at=line.at,
        )
        for line in lines
    )
