"""One Slurm attempt as its handle describes it, and how a finished job maps to an Outcome.

Pure file reads and decisions (no subprocesses), so the mapping of every Slurm end state is
testable without a cluster, including those a one-node test cluster cannot produce on demand.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from providers.base import ErrorInfo, Handle, Outcome, ProviderError
from providers.shared.outcome import OUTCOME_FILE, cancelled_detail, read_outcome, timeout_detail
from providers.slurm import job
from providers.slurm.tail import Tail

PROVIDER_ERROR = "providers.base.ProviderError"


@dataclass(frozen=True)
class Attempt:
    """What a slurm handle says, typed, plus the files in the attempt's job dir."""

    job_id: str
    job_dir: Path
    timeout_s: float | None
    command: bool  # a plain command: no outcome.json, the exit code decides

    @classmethod
    def of(cls, handle: Handle) -> Attempt:
        if handle.provider != "slurm":
            raise ProviderError(f"not a slurm handle (provider {handle.provider!r})")
        try:
            d = handle.data
            timeout = d.get("timeout_s")
            return cls(
                job_id=str(d["job_id"]),
                job_dir=Path(str(d["job_dir"])),
                timeout_s=None if timeout is None else float(timeout),
                command=bool(d.get("command", False)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProviderError(f"malformed slurm handle {handle.to_json()}: {exc}") from exc

    def file(self, name: str) -> Path:
        return self.job_dir / name

    def read(self, name: str) -> str | None:
        try:
            return self.file(name).read_text(encoding="utf-8").strip()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def started_at(self) -> float | None:
        """Epoch seconds at which the job started running (queue time does not count)."""
        raw = self.read(job.STARTED_FILE)
        try:
            return float(raw) if raw else None
        except ValueError:
            return None

    def mark_ended(self, reason: str) -> None:
        """Record why we stop the job; the first reason wins."""
        try:
            with open(self.file(job.ENDED_BY_FILE), "x", encoding="utf-8") as fh:
                fh.write(reason)
        except FileExistsError:
            pass

    def exit_code(self, info: job.JobInfo | None) -> int | None:
        # The script's own record is the step's status; Slurm's ExitCode is the script's.
        raw = self.read(job.EXIT_CODE_FILE)
        if raw and raw.lstrip("-").isdigit():
            return int(raw)
        return info.exit_code if info else None


def conclude(attempt: Attempt, info: job.JobInfo | None) -> Outcome:
    """How a job that is no longer active ended (``info`` None: slurmctld forgot it)."""
    rc = attempt.exit_code(info)
    ended_by = attempt.read(job.ENDED_BY_FILE)
    state = info.state if info else None
    if ended_by == "timed_out" or (ended_by is None and state == "TIMEOUT"):
        if ended_by == "timed_out":
            limit = f"{attempt.timeout_s:g}" if attempt.timeout_s is not None else "?"
            message = f"step exceeded its timeout of {limit} s; its Slurm job was cancelled"
        else:
            message = f"Slurm stopped job {attempt.job_id} at its time limit (TIMEOUT)"
        detail = timeout_detail(message)
        return Outcome(state="timed_out", exit_code=rc, error=detail)
    if ended_by == "cancelled":
        detail = cancelled_detail()
        return Outcome(state="cancelled", exit_code=rc, error=detail)
    if info is not None and (info.state in job.INFRA_STATES or info.state == "CANCELLED"):
        # Nobody in Meridian asked for CANCELLED: an administrator or a policy did.
        why = "cancelled outside Meridian (scancel?)" if state == "CANCELLED" else info.state
        reason = f" (reason: {info.reason})" if info.reason not in ("", "None") else ""
        message = f"Slurm job {attempt.job_id} ended {why}{reason}"
        detail = ErrorInfo("infrastructure", PROVIDER_ERROR, message)
        return Outcome(state="failed", exit_code=rc, error=detail)
    return _from_step(attempt, rc, state)


def _from_step(attempt: Attempt, rc: int | None, state: str | None) -> Outcome:
    """The outcome the step itself reported (outcome.json), or what its exit code says."""
    if attempt.command:
        if rc == 0:
            return Outcome(state="succeeded", exit_code=0, result_json="null")
    else:
        outcome = read_outcome(attempt.job_dir)
        if outcome is not None:
            if rc is None:  # stepexec exits 0 on success and 1 on failure
                rc = 0 if outcome.state == "succeeded" else 1
            return dataclasses.replace(outcome, exit_code=rc)
    what = "command" if attempt.command else "step"
    ended = f"exited with code {rc}" if rc is not None else "ended with an unknown exit code"
    message = f"Slurm job {attempt.job_id} ({state or 'no longer known to slurmctld'}): "
    message += f"the {what} {ended}"
    if not attempt.command:
        message += f" without writing {attempt.file(OUTCOME_FILE)}"
        if rc == 0:  # exit 0 and no outcome: we are not looking at the dir the job wrote to
            message += "; is the job dir on a filesystem shared with the compute nodes?"
            detail = ErrorInfo("infrastructure", PROVIDER_ERROR, message)
            return Outcome(state="failed", exit_code=rc, error=detail)
    tail = Tail.last_lines(attempt.file(job.STDERR_LOG))
    if tail:
        message += f"; last stderr lines:\n{tail}"
    detail = ErrorInfo("transient", PROVIDER_ERROR, message)
    return Outcome(state="failed", exit_code=rc, error=detail)
