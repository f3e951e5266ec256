"""The ``slurm`` provider: runs each attempt as one Slurm batch job (sbatch/scontrol/scancel).

Shared-filesystem assumption: the attempt's job dir (its work dir, or ``shared_dir``), the code
bundle and meridian itself are at the same paths on the agent's machine and on the compute
nodes. The batch script (see ``providers.slurm.job``) runs ``python -m meridian.stepexec
--work-dir DIR`` (or a plain ``command``), Slurm writes its output to files in the job dir and
stepexec its ``outcome.json``, so everything survives an agent restart. Job state comes from
``scontrol show job -o`` (``sacct`` needs slurmdbd, which many clusters do not run); once
slurmctld forgets a finished job (MinJobAge) the files in the job dir still tell how it ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar

from providers.base import (
    Capabilities,
    ErrorInfo,
    ExecutionSpec,
    Handle,
    LogRecord,
    Outcome,
    Provider,
    ProviderError,
)
from providers.shared.logfollow import follow_tails
from providers.shared.outcome import OUTCOME_FILE
from providers.slurm import job
from providers.slurm.config import OPTIONS_SCHEMA, SlurmConfig, string_map, validate_options
from providers.slurm.state import PROVIDER_ERROR, Attempt, conclude
from providers.slurm.tail import Tail

_LOG_POLL_S = 0.2
_QUERY_ERROR_BUDGET_S = 60.0  # how long slurmctld may be unreachable before wait() gives up


class _SlurmCommandError(ProviderError):
    """A Slurm command failed; the message carries Slurm's own words."""


class SlurmProvider(Provider):
    """Runs steps as Slurm batch jobs. Config: see ``providers.slurm.config.SlurmConfig``."""

    type: ClassVar[str] = "slurm"
    capabilities: ClassVar[Capabilities] = Capabilities(
        cancel=True, recover=True, streaming_logs=True, python_steps=True
    )
    options_schema: ClassVar[Mapping[str, Any]] = OPTIONS_SCHEMA

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        self.settings = SlurmConfig.of(self.config)

    def validate_options(self, options: Mapping[str, Any]) -> None:
        super().validate_options(options)
        validate_options(options)

    # ---- Slurm commands ------------------------------------------------------------------

    async def _run(self, *argv: str) -> tuple[int, str, str]:
        """Run one Slurm client command; (exit status, stdout, stderr)."""
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self.settings.client_env(),
            )
        except OSError as exc:
            raise _SlurmCommandError(
                f"cannot run {argv[0]!r}: {exc}; install the Slurm client commands or set "
                "the provider's 'bin_dir'"
            ) from exc
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.settings.command_timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise _SlurmCommandError(
                f"{job.sequence_repr(argv)} did not answer within "
                f"{self.settings.command_timeout_s:g} s"
            ) from None
        rc = proc.returncode if proc.returncode is not None else -1
        return rc, out.decode(errors="replace"), err.decode(errors="replace").strip()

    async def _job_info(self, job_id: str) -> job.JobInfo | None:
        """The job as slurmctld sees it; None once it forgot the job (or never knew it)."""
        argv = (self.settings.binary("scontrol"), "show", "job", "-o", job_id)
        rc, out, err = await self._run(*argv)
        if rc == 0:
            return job.parse_job(out)
        if "Invalid job id" in err:
            return None
        raise _SlurmCommandError(f"scontrol show job {job_id} failed (exit {rc}): {err}")

    async def _scancel(self, job_id: str) -> None:
        rc, _, err = await self._run(self.settings.binary("scancel"), job_id)
        # Cancelling a job that already ended is fine: cancel() is idempotent.
        if rc != 0 and "Invalid job id" not in err and "already completing" not in err:
            raise _SlurmCommandError(f"scancel {job_id} failed (exit {rc}): {err}")

    # ---- verbs ---------------------------------------------------------------------------

    async def submit(self, spec: ExecutionSpec) -> Handle:
        self.validate_options(spec.options)
        string_map(spec.env, "the step's environment", ProviderError)
        job_dir = job.job_dir_of(self.settings, spec)
        try:
            job.write_job_files(self.settings, spec, job_dir)
        except OSError as exc:
            raise ProviderError(f"cannot write the Slurm job files in {job_dir}: {exc}") from exc
        argv = job.sbatch_argv(self.settings, spec, job_dir)
        rc, out, err = await self._run(*argv)
        job_id = out.strip().split(";", 1)[0]  # --parsable prints "jobid[;cluster]"
        if rc != 0 or not job_id.isdigit():
            raise ProviderError(
                f"sbatch rejected step {spec.step_key!r} (exit {rc}): {err or out.strip()}"
            )
        timeout = spec.timeout_s if spec.timeout_s and spec.timeout_s > 0 else None
        data = {
            "job_id": job_id,
            "job_dir": str(job_dir),
            "timeout_s": timeout,
            "command": spec.options.get("command") is not None,
            "submitted_at_ms": int(time.time() * 1000),
        }
        return Handle(provider="slurm", resource_id=f"slurm:{job_id}", data=data)

    async def poll(self, handle: Handle) -> Outcome | None:
        attempt = Attempt.of(handle)
        info = await self._job_info(attempt.job_id)
        if info is not None and info.active:
            return None
        return conclude(attempt, info)

    async def wait(self, handle: Handle) -> Outcome:
        attempt = Attempt.of(handle)
        failing_since: float | None = None
        stop_sent = False
        while True:
            try:
                info = await self._job_info(attempt.job_id)
                if info is None or not info.active:
                    return conclude(attempt, info)
                if not stop_sent and self._timed_out(attempt, info):
                    attempt.mark_ended("timed_out")
                    await self._stop(attempt, self.settings.kill_grace_s)
                    stop_sent = True
                failing_since = None
            except _SlurmCommandError as exc:
                # slurmctld restarts and fails over: tolerate a short outage, then say why.
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > _QUERY_ERROR_BUDGET_S:
                    detail = ErrorInfo("infrastructure", PROVIDER_ERROR, str(exc))
                    return Outcome(state="failed", error=detail)
            await asyncio.sleep(self.settings.poll_interval_s)

    def _timed_out(self, attempt: Attempt, info: job.JobInfo) -> bool:
        """Whether the step ran longer than its timeout (time in the queue does not count)."""
        if attempt.timeout_s is None or info.state == "PENDING":
            return False
        if attempt.read(job.ENDED_BY_FILE) == "cancelled":
            return False  # already being stopped for another reason
        started = attempt.started_at()
        return started is not None and time.time() - started >= attempt.timeout_s

    async def cancel(self, handle: Handle, grace_s: float) -> None:
        attempt = Attempt.of(handle)
        info = await self._job_info(attempt.job_id)
        if info is None or not info.active:
            return  # already over (or forgotten): nothing to stop, nothing to relabel
        attempt.mark_ended("cancelled")
        await self._stop(attempt, grace_s)

    async def _stop(self, attempt: Attempt, grace_s: float) -> None:
        """scancel the job: the script TERMs the step, KILLs it after ``grace_s``.

        Slurm refuses further signals once a job is cancelled, so the grace is enforced inside
        the job (the script reads ``cancel_grace``); the cluster's KillWait stays the backstop.
        """
        with contextlib.suppress(OSError):
            attempt.file(job.CANCEL_GRACE_FILE).write_text(f"{max(0.0, grace_s):g}\n")
        await self._scancel(attempt.job_id)
        deadline = time.monotonic() + max(0.0, grace_s) + 5.0
        while time.monotonic() < deadline:
            info = await self._job_info(attempt.job_id)
            if info is None or not info.active:
                return
            await asyncio.sleep(min(self.settings.poll_interval_s, 0.5))

    async def recover(self, handle: Handle) -> bool:
        attempt = Attempt.of(handle)
        if await self._job_info(attempt.job_id) is not None:
            return True
        return any(
            attempt.file(name).exists()
            for name in (OUTCOME_FILE, job.EXIT_CODE_FILE, job.ENDED_BY_FILE)
        )

    async def logs(self, handle: Handle) -> AsyncIterator[LogRecord]:
        attempt = Attempt.of(handle)
        tails = [
            Tail("stdout", attempt.file(job.STDOUT_LOG)),
            Tail("stderr", attempt.file(job.STDERR_LOG)),
        ]
        next_check = 0.0

        async def ended() -> bool:
            # Ask slurmctld only every poll interval; the files are cheap to re-read.
            nonlocal next_check
            if time.monotonic() < next_check:
                return False
            done = await self._ended(attempt)
            next_check = time.monotonic() + self.settings.poll_interval_s
            return done

        async for record in follow_tails(tails, ended, _LOG_POLL_S):
            yield record

    async def _ended(self, attempt: Attempt) -> bool:
        try:
            info = await self._job_info(attempt.job_id)
        except _SlurmCommandError:
            return False  # keep following; wait() decides when an outage becomes a failure
        return info is None or not info.active
