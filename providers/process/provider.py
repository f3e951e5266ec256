"""The ``process`` provider: runs each attempt as a local process, warm or fresh.

By default a step runs in a **warm worker** (``providers/process/pool.py``,
``meridian/stepworker.py``): a pre-started interpreter of this provider's pool that already
imported the executor and the step's bundle; ``@step(isolation="process")`` asks for a fresh
interpreter (``python -m meridian.stepexec --work-dir DIR``), which is also what runs when every
warm worker is busy or the pool is off (``warm_workers = 0``). Either way the step's output goes
to files in the attempt's work dir and its outcome to ``DIR/outcome.json``, so everything
survives an agent restart.

Handles record pid, process group and the kernel start time of the process, so a re-attached
agent can tell its process from an unrelated one that later got the same pid. A warm attempt's
handle names its worker (``"warm": true``, the worker's pid, group and start time, the work dir
and the worker's step number). Re-attaching to it (after an agent restart) never talks to the
worker: the worker saw its input end, finishes the step it runs, writes ``outcome.json`` and
exits without taking new work, so the new agent waits for ``outcome.json`` or for the worker to
end (pidfd), enforces the timeout from the handle, and on cancel or timeout kills the worker's
process group. Processes are watched by pid and pidfd, never by scanning ``/proc``.
Linux only.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from providers.base import (
    Capabilities,
    ExecutionSpec,
    Handle,
    LogRecord,
    Outcome,
    Provider,
    ProviderError,
    ProviderOptionsError,
)
from providers.process.config import (
    CONFIG_KEYS,
    ISOLATIONS,
    OPTIONS_SCHEMA,
    PoolConfig,
    step_environment,
    string_map,
    worker_environment,
    write_json_atomic,
)
from providers.process.pool import Finished, Job, WorkerPool
from providers.process.proctree import leader_alive, read_stat, terminate_group, wait_ended
from providers.process.state import (
    STDERR_LOG,
    STDOUT_LOG,
    Attempt,
    conclude,
    ended_by,
    mark_ended,
)
from providers.shared.filetail import FileTail
from providers.shared.logfollow import follow_tails
from providers.shared.outcome import (
    OUTCOME_FILE,
    SPEC_FILE,
)

_POLL_S = 0.2  # re-attached warm attempts: how often to look for outcome.json
_LOG_POLL_S = 0.1
_REAP_WAIT_S = 5.0


class ProcessProvider(Provider):
    """Runs steps as local processes. Config: ``python``, ``kill_grace_s``, ``env``,
    ``warm_workers`` (pool size, 0 = off), ``worker_max_steps``, ``worker_max_rss_mib``."""

    type: ClassVar[str] = "process"
    capabilities: ClassVar[Capabilities] = Capabilities(
        cancel=True, recover=True, streaming_logs=True, python_steps=True
    )
    options_schema: ClassVar[Mapping[str, Any]] = OPTIONS_SCHEMA
    _CONFIG_KEYS: ClassVar[frozenset[str]] = CONFIG_KEYS

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        unknown = sorted(set(self.config) - self._CONFIG_KEYS)
        if unknown:
            raise ProviderError(
                f"process provider does not accept config key(s) {', '.join(unknown)}; "
                f"known keys: {', '.join(sorted(self._CONFIG_KEYS))}"
            )
        self.python = str(self.config.get("python") or sys.executable)
        try:
            self.kill_grace_s = float(self.config.get("kill_grace_s", 5.0))
        except (TypeError, ValueError) as exc:
            raise ProviderError(f"process provider: kill_grace_s must be a number: {exc}") from exc
        self.env = string_map(self.config.get("env", {}), "config 'env'", ProviderError)
        self.pool_config = PoolConfig.from_config(self.config)
        # Processes this instance started: waited on through asyncio (which also reaps them).
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._pool: WorkerPool | None = None
        self._jobs: dict[str, Job] = {}  # warm attempts of this instance, by work dir
        # Set by wait() once an attempt ended, so its log follower reads the rest at once.
        self._log_wakes: dict[str, asyncio.Event] = {}

    def validate_options(self, options: Mapping[str, Any]) -> None:
        super().validate_options(options)
        string_map(options.get("env", {}), "option 'env'", ProviderOptionsError)
        cwd = options.get("cwd")
        if cwd is not None and (not isinstance(cwd, str) or not cwd or "\0" in cwd):
            raise ProviderOptionsError(f"option 'cwd' must be a non-empty path string, not {cwd!r}")

    async def submit(self, spec: ExecutionSpec) -> Handle:
        self.validate_options(spec.options)
        if spec.isolation not in ISOLATIONS:
            raise ProviderOptionsError(
                f"isolation must be one of {', '.join(map(repr, ISOLATIONS))}, "
                f"not {spec.isolation!r}"
            )
        work_dir = spec.work_dir.resolve()
        work_dir.mkdir(parents=True, exist_ok=True)
        bundle = str(spec.bundle_dir.resolve()) if spec.bundle_dir else None
        step: dict[str, Any] = {
            "module": spec.module,
            "function": spec.function,
            "inputs_json": spec.inputs_json,
            "bundle_dir": bundle,
            "step_key": spec.step_key,
            **spec.context_fields(),  # meridian.context() in the step
            **spec.result_fields(),  # result policy, input files (docs/results.md)
        }
        write_json_atomic(work_dir / SPEC_FILE, step)
        cwd = self._cwd(spec, work_dir)
        if spec.isolation == "warm" and self.pool_config.size > 0:
            handle = await self._submit_warm(spec, work_dir, cwd, bundle or "")
            if handle is not None:
                return handle
        proc = await self._spawn(spec, work_dir, cwd)
        stat = read_stat(proc.pid)
        self._procs[proc.pid] = proc
        data = {
            "pid": proc.pid,
            "pgid": proc.pid,  # start_new_session: the step leads its own session and group
            "start_time": stat.start_time if stat else None,
            "work_dir": str(work_dir),
            "timeout_s": _timeout(spec),
            "started_at_ms": int(time.time() * 1000),
        }
        return Handle(provider="process", resource_id=f"pid:{proc.pid}", data=data)

    async def _submit_warm(
        self, spec: ExecutionSpec, work_dir: Path, cwd: Path, bundle: str
    ) -> Handle | None:
        """Run the step in a warm worker of its bundle; None when every worker is busy."""
        pool = self._warm_pool()
        env = step_environment(self.env, spec)
        # The step's code: its bundle and the PYTHONPATH a fresh interpreter would import from.
        worker = await pool.acquire(f"{bundle}\0{env['PYTHONPATH']}")
        if worker is None:
            return None
        for name in (STDOUT_LOG, STDERR_LOG):
            (work_dir / name).touch()
        started_at_ms = int(time.time() * 1000)
        job = await pool.run(worker, work_dir, cwd, env)
        self._jobs[str(work_dir)] = job
        data = {
            "warm": True,
            "pid": worker.pid,
            "pgid": worker.pid,  # each worker leads its own session and group
            "start_time": worker.start_time,
            "work_dir": str(work_dir),
            "timeout_s": _timeout(spec),
            "started_at_ms": started_at_ms,
            "worker_step": job.number,
        }
        # Like a fresh step's, the resource id names the process the step runs in.
        return Handle("process", f"pid:{worker.pid}", data)

    def _warm_pool(self) -> WorkerPool:
        loop = asyncio.get_running_loop()
        if self._pool is None or self._pool.loop is not loop:
            if self._pool is not None:
                self._pool.abandon()  # its event loop is gone (tests run one loop per case)
            config_env = self.env
            self._pool = WorkerPool(
                self.python,
                lambda: worker_environment(config_env),
                self.pool_config,
                self.kill_grace_s,
            )
        return self._pool

    async def _spawn(
        self, spec: ExecutionSpec, work_dir: Path, cwd: Path
    ) -> asyncio.subprocess.Process:
        argv = [self.python, "-m", "meridian.stepexec", "--work-dir", str(work_dir)]
        env = step_environment(self.env, spec)
        with (
            open(work_dir / STDOUT_LOG, "ab") as out,
            open(work_dir / STDERR_LOG, "ab") as err,
        ):
            try:
                return await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    cwd=cwd,
                    env=env,
                    start_new_session=True,
                )
            except OSError as exc:
                raise ProviderError(f"cannot start step process {argv[0]!r}: {exc}") from exc

    def _cwd(self, spec: ExecutionSpec, work_dir: Path) -> Path:
        raw = spec.options.get("cwd")
        if raw is None:
            return work_dir
        cwd = (spec.bundle_dir or work_dir) / str(raw)
        if not cwd.is_dir():
            raise ProviderOptionsError(f"option 'cwd': {cwd} is not a directory")
        return cwd

    async def wait(self, handle: Handle) -> Outcome:
        attempt = Attempt.of(handle)
        try:
            return await self._wait(attempt)
        finally:
            wake = self._log_wakes.get(str(attempt.work_dir))
            if wake is not None:
                wake.set()

    async def _wait(self, attempt: Attempt) -> Outcome:
        if attempt.warm:
            return await self._wait_warm(attempt)
        rc, timed_out = await self._wait_exit(attempt)
        if timed_out:
            mark_ended(attempt.work_dir, "timed_out")
            await self._terminate(attempt, self.kill_grace_s)
            rc = await self._reaped_returncode(attempt)
        # Children the step left behind die with it: no orphans outlive an attempt.
        await self._terminate(attempt, self.kill_grace_s)
        self._procs.pop(attempt.pid, None)
        # Reading outcome.json (it may be megabytes) and stderr happens off the event loop.
        return await asyncio.to_thread(conclude, attempt, rc)

    async def _wait_exit(self, attempt: Attempt) -> tuple[int | None, bool]:
        """Wait for the step process to end; (returncode if known, whether it timed out)."""
        deadline = attempt.deadline()
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        proc = self._procs.get(attempt.pid)
        if proc is not None:
            try:
                return await asyncio.wait_for(proc.wait(), remaining), False
            except TimeoutError:
                return None, True
        # Re-attached: we are not the parent; a pidfd (checked against the start time) says
        # when it ends.
        ended = await wait_ended(attempt.pid, attempt.start_time, remaining)
        return None, not ended

    async def _wait_warm(self, attempt: Attempt) -> Outcome:
        job = self._jobs.get(str(attempt.work_dir))
        if job is not None and job.worker.pid == attempt.pid:
            finished = await self._wait_job(attempt, job)
            self._jobs.pop(str(attempt.work_dir), None)
            rc = None if finished.reported else finished.exit_code
            if not finished.reported:  # the worker died: what its step started dies too
                await self._terminate(attempt, self.kill_grace_s)
        else:
            rc = await self._wait_reattached_warm(attempt)
        return await asyncio.to_thread(conclude, attempt, rc)

    async def _wait_job(self, attempt: Attempt, job: Job) -> Finished:
        deadline = attempt.deadline()
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return await asyncio.wait_for(asyncio.shield(job.done), remaining)
        except TimeoutError:
            mark_ended(attempt.work_dir, "timed_out")
            await self._kill_worker(attempt, self.kill_grace_s)
        try:  # the pool resolves the job once it saw the worker end
            return await asyncio.wait_for(asyncio.shield(job.done), _REAP_WAIT_S)
        except TimeoutError:
            return Finished(reported=False)

    async def _wait_reattached_warm(self, attempt: Attempt) -> int | None:
        """Wait for ``outcome.json`` or the worker's end (it exits after the step, its agent
        being gone); enforce the timeout; kill what the step left if it wrote no outcome."""
        deadline = attempt.deadline()
        outcome_file = attempt.work_dir / OUTCOME_FILE
        while not outcome_file.exists():
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                mark_ended(attempt.work_dir, "timed_out")
                await self._kill_worker(attempt, self.kill_grace_s)
                return None
            wait_s = _POLL_S if remaining is None else min(_POLL_S, remaining)
            if await wait_ended(attempt.pid, attempt.start_time, wait_s):
                break
        if not outcome_file.exists():
            # The worker is gone without an outcome: this takes what its step left running.
            await self._kill_worker(attempt, self.kill_grace_s)
        return None

    async def _kill_worker(self, attempt: Attempt, grace_s: float) -> None:
        """Kill a warm attempt's worker and its group (the pool, if ours, replaces it)."""
        job = self._jobs.get(str(attempt.work_dir))
        if job is not None and self._pool is not None:
            await self._pool.kill(job.worker, grace_s)
            return
        await terminate_group(attempt.pid, attempt.start_time, attempt.pgid, grace_s)

    async def _reaped_returncode(self, attempt: Attempt) -> int | None:
        proc = self._procs.get(attempt.pid)
        if proc is None:
            return None
        try:
            return await asyncio.wait_for(proc.wait(), 5.0)
        except TimeoutError:
            return None

    async def cancel(self, handle: Handle, grace_s: float) -> None:
        attempt = Attempt.of(handle)
        if attempt.warm:
            await self._cancel_warm(attempt, grace_s)
            return
        if leader_alive(attempt.pid, attempt.start_time):
            mark_ended(attempt.work_dir, "cancelled")
        await self._terminate(attempt, grace_s)

    async def _cancel_warm(self, attempt: Attempt, grace_s: float) -> None:
        job = self._jobs.get(str(attempt.work_dir))
        if job is not None:
            running = not job.done.done()
        else:  # re-attached: a written outcome means the worker moved past this step
            running = not (attempt.work_dir / OUTCOME_FILE).exists() and leader_alive(
                attempt.pid, attempt.start_time
            )
        if running:
            mark_ended(attempt.work_dir, "cancelled")
            await self._kill_worker(attempt, grace_s)

    async def _terminate(self, attempt: Attempt, grace_s: float) -> None:
        """SIGTERM the step's group, SIGKILL what is left after ``grace_s``; no-op when empty."""
        await terminate_group(attempt.pid, attempt.start_time, attempt.pgid, grace_s)

    async def recover(self, handle: Handle) -> bool:
        attempt = Attempt.of(handle)
        if leader_alive(attempt.pid, attempt.start_time):
            return True  # a warm worker that is alive still runs this step or writes its outcome
        if ended_by(attempt.work_dir) or (attempt.work_dir / OUTCOME_FILE).exists():
            return True
        # Gone without a word: report it lost, but do not leave its children running.
        await self._terminate(attempt, self.kill_grace_s)
        return False

    async def logs(self, handle: Handle) -> AsyncIterator[LogRecord]:
        attempt = Attempt.of(handle)
        tails = [
            FileTail("stdout", attempt.work_dir / STDOUT_LOG),
            FileTail("stderr", attempt.work_dir / STDERR_LOG),
        ]

        async def ended() -> bool:
            return not self._active(attempt)

        key = str(attempt.work_dir)
        wake = self._log_wakes.setdefault(key, asyncio.Event())
        try:
            async for record in follow_tails(tails, ended, _LOG_POLL_S, wake):
                yield record
        finally:
            self._log_wakes.pop(key, None)

    def _active(self, attempt: Attempt) -> bool:
        """Whether the step may still write output (checked every log poll: cheap, no scan)."""
        if attempt.warm:
            job = self._jobs.get(str(attempt.work_dir))
            if job is not None:
                return not job.done.done()  # the worker answers after the outcome is written
            if (attempt.work_dir / OUTCOME_FILE).exists():
                return False
        elif attempt.pid in self._procs:
            return True  # until wait() has ended the step's leftover children too
        return leader_alive(attempt.pid, attempt.start_time)

    async def close(self) -> None:
        # Running steps are deliberately left alone: a restarted agent re-attaches to them.
        # Warm workers finish the step they run (writing its outcome), then exit.
        self._procs.clear()
        self._jobs.clear()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()


def _timeout(spec: ExecutionSpec) -> float | None:
    return spec.timeout_s if spec.timeout_s and spec.timeout_s > 0 else None
