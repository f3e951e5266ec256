"""The ``process`` provider: runs each attempt as a local subprocess in its own process group.

The step runs as ``python -m meridian.stepexec --work-dir DIR``; its output goes to files in the
attempt's work dir and its outcome to ``DIR/outcome.json``, so everything survives an agent
restart. The handle records pid, process group and the kernel start time of the process, so a
re-attached agent can tell its step from an unrelated process that later got the same pid.
Linux only (it reads ``/proc``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
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
    ProviderOptionsError,
)
from providers.process.config import (
    CONFIG_KEYS,
    OPTIONS_SCHEMA,
    meridian_root,
    string_map,
    write_json_atomic,
)
from providers.process.proctree import group_members, killpg, leader_alive, owns_group, read_stat
from providers.process.state import (
    STDERR_LOG,
    STDOUT_LOG,
    Attempt,
    describe_exit,
    ended_by,
    mark_ended,
    stderr_tail,
)
from providers.shared.filetail import FileTail
from providers.shared.logfollow import follow_tails
from providers.shared.outcome import (
    OUTCOME_FILE,
    SPEC_FILE,
    cancelled_detail,
    read_outcome,
    timeout_detail,
)

_POLL_S = 0.2
_LOG_POLL_S = 0.1


class ProcessProvider(Provider):
    """Runs steps as local subprocesses. Config: ``python``, ``kill_grace_s``, ``env``."""

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
        # Processes this instance started: waited on through asyncio (which also reaps them).
        self._procs: dict[int, asyncio.subprocess.Process] = {}

    def validate_options(self, options: Mapping[str, Any]) -> None:
        super().validate_options(options)
        string_map(options.get("env", {}), "option 'env'", ProviderOptionsError)
        cwd = options.get("cwd")
        if cwd is not None and (not isinstance(cwd, str) or not cwd or "\0" in cwd):
            raise ProviderOptionsError(f"option 'cwd' must be a non-empty path string, not {cwd!r}")

    async def submit(self, spec: ExecutionSpec) -> Handle:
        self.validate_options(spec.options)
        work_dir = spec.work_dir.resolve()
        work_dir.mkdir(parents=True, exist_ok=True)
        bundle = str(spec.bundle_dir.resolve()) if spec.bundle_dir else None
        write_json_atomic(
            work_dir / SPEC_FILE,
            {
                "module": spec.module,
                "function": spec.function,
                "inputs_json": spec.inputs_json,
                "bundle_dir": bundle,
                "step_key": spec.step_key,
            },
        )
        proc = await self._spawn(spec, work_dir, self._cwd(spec, work_dir))
        stat = read_stat(proc.pid)
        self._procs[proc.pid] = proc
        timeout = spec.timeout_s if spec.timeout_s and spec.timeout_s > 0 else None
        data = {
            "pid": proc.pid,
            "pgid": proc.pid,  # start_new_session: the step leads its own session and group
            "start_time": stat.start_time if stat else None,
            "work_dir": str(work_dir),
            "timeout_s": timeout,
            "started_at_ms": int(time.time() * 1000),
        }
        return Handle(provider="process", resource_id=f"pid:{proc.pid}", data=data)

    async def _spawn(
        self, spec: ExecutionSpec, work_dir: Path, cwd: Path
    ) -> asyncio.subprocess.Process:
        argv = [self.python, "-m", "meridian.stepexec", "--work-dir", str(work_dir)]
        env = self._environment(spec)
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

    def _environment(self, spec: ExecutionSpec) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.env)
        env.update(spec.options.get("env", {}))
        env.update(spec.env)
        path = [str(spec.bundle_dir.resolve())] if spec.bundle_dir else []
        path.append(meridian_root())  # stepexec must import even from a bare bundle
        if env.get("PYTHONPATH"):
            path.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(path)
        env["MERIDIAN_ATTEMPT_ID"] = spec.attempt_id
        env["MERIDIAN_FLOW_RUN_ID"] = spec.flow_run_id
        env["MERIDIAN_STEP_KEY"] = spec.step_key
        return env

    async def wait(self, handle: Handle) -> Outcome:
        attempt = Attempt.of(handle)
        rc, timed_out = await self._wait_exit(attempt)
        if timed_out:
            mark_ended(attempt.work_dir, "timed_out")
            await self._terminate(attempt, self.kill_grace_s)
            rc = await self._reaped_returncode(attempt)
        # Children the step left behind die with it: no orphans outlive an attempt.
        await self._terminate(attempt, self.kill_grace_s)
        self._procs.pop(attempt.pid, None)
        # Reading outcome.json (it may be megabytes) and stderr happens off the event loop.
        return await asyncio.to_thread(self._conclude, attempt, rc)

    async def _wait_exit(self, attempt: Attempt) -> tuple[int | None, bool]:
        """Wait for the step process to end; (returncode if known, whether it timed out)."""
        deadline = attempt.deadline()
        proc = self._procs.get(attempt.pid)
        if proc is not None:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return await asyncio.wait_for(proc.wait(), remaining), False
            except TimeoutError:
                return None, True
        # Re-attached: we are not the parent, so watch /proc (pid + start time) instead.
        while leader_alive(attempt.pid, attempt.start_time):
            if deadline is not None and time.monotonic() >= deadline:
                return None, True
            await asyncio.sleep(_POLL_S)
        return None, False

    async def _reaped_returncode(self, attempt: Attempt) -> int | None:
        proc = self._procs.get(attempt.pid)
        if proc is None:
            return None
        try:
            return await asyncio.wait_for(proc.wait(), 5.0)
        except TimeoutError:
            return None

    def _conclude(self, attempt: Attempt, rc: int | None) -> Outcome:
        reason = ended_by(attempt.work_dir)
        if reason == "timed_out":
            limit = f"{attempt.timeout_s:g}" if attempt.timeout_s is not None else "?"
            message = f"step exceeded its timeout of {limit} s and was killed"
            detail = timeout_detail(message)
            return Outcome(state="timed_out", exit_code=rc, error=detail)
        if reason == "cancelled":
            detail = cancelled_detail()
            return Outcome(state="cancelled", exit_code=rc, error=detail)
        outcome = read_outcome(attempt.work_dir)
        if outcome is not None:
            if rc is None:  # re-attached: stepexec exits 0 on success and 1 on failure
                rc = 0 if outcome.state == "succeeded" else 1
            return dataclasses.replace(outcome, exit_code=rc)
        message = f"step process {describe_exit(rc)} without reporting an outcome"
        tail = stderr_tail(attempt.work_dir)
        if tail:
            message += f"; last stderr lines:\n{tail}"
        detail = ErrorInfo("infrastructure", "providers.base.ProviderError", message)
        return Outcome(state="failed", exit_code=rc, error=detail)

    async def cancel(self, handle: Handle, grace_s: float) -> None:
        attempt = Attempt.of(handle)
        if leader_alive(attempt.pid, attempt.start_time):
            mark_ended(attempt.work_dir, "cancelled")
        await self._terminate(attempt, grace_s)

    async def _terminate(self, attempt: Attempt, grace_s: float) -> None:
        """SIGTERM the whole group, SIGKILL what is left after ``grace_s``; no-op when empty."""
        if not owns_group(attempt.pid, attempt.start_time):
            return  # the pid now belongs to an unrelated process: never signal it
        if not group_members(attempt.pgid):
            return
        killpg(attempt.pgid, signal.SIGTERM)
        deadline = time.monotonic() + max(0.0, grace_s)
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            if not group_members(attempt.pgid):
                return
        killpg(attempt.pgid, signal.SIGKILL)
        for _ in range(100):  # SIGKILL is not instant: wait until the kernel tore them down
            if not group_members(attempt.pgid):
                return
            await asyncio.sleep(0.02)

    async def recover(self, handle: Handle) -> bool:
        attempt = Attempt.of(handle)
        if leader_alive(attempt.pid, attempt.start_time):
            return True
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

        async for record in follow_tails(tails, ended, _LOG_POLL_S):
            yield record

    def _active(self, attempt: Attempt) -> bool:
        if leader_alive(attempt.pid, attempt.start_time):
            return True
        return owns_group(attempt.pid, attempt.start_time) and bool(group_members(attempt.pgid))

    async def close(self) -> None:
        # Running steps are deliberately left alone: a restarted agent re-attaches to them.
        self._procs.clear()
