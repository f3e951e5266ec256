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
import importlib.util
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from providers._filetail import FileTail
from providers._outcome import (
    OUTCOME_FILE,
    SPEC_FILE,
    cancelled_detail,
    read_outcome,
    timeout_detail,
)
from providers._proctree import group_members, killpg, leader_alive, owns_group, read_stat
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

STDOUT_LOG = "stdout.log"
STDERR_LOG = "stderr.log"
ENDED_BY_FILE = "ended_by"  # "cancelled" | "timed_out": written before we signal the group
STDERR_TAIL_LINES = 20
STDERR_TAIL_BYTES = 4 * 1024
_POLL_S = 0.2
_LOG_POLL_S = 0.1


@dataclass(frozen=True)
class _Attempt:
    """What a process handle says, typed."""

    pid: int
    pgid: int
    start_time: int | None
    work_dir: Path
    timeout_s: float | None
    started_at_ms: int

    @classmethod
    def of(cls, handle: Handle) -> _Attempt:
        if handle.provider != "process":
            raise ProviderError(f"not a process handle (provider {handle.provider!r})")
        try:
            d = handle.data
            start = d.get("start_time")
            timeout = d.get("timeout_s")
            return cls(
                pid=int(d["pid"]),
                pgid=int(d["pgid"]),
                start_time=None if start is None else int(start),
                work_dir=Path(str(d["work_dir"])),
                timeout_s=None if timeout is None else float(timeout),
                started_at_ms=int(d.get("started_at_ms", 0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProviderError(f"malformed process handle {handle.to_json()}: {exc}") from exc

    def deadline(self) -> float | None:
        """The monotonic time at which the attempt times out (survives a re-attach)."""
        if self.timeout_s is None:
            return None
        elapsed = max(0.0, time.time() - self.started_at_ms / 1000)
        return time.monotonic() + self.timeout_s - elapsed


def _meridian_root() -> str:
    """The directory holding the ``meridian`` package, found without importing it."""
    spec = importlib.util.find_spec("meridian")
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / "stepexec.py").is_file():
            return str(Path(location).parent)
    raise ProviderError("cannot find meridian.stepexec; is meridian-orchestrator installed?")


def _write_json_atomic(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(value, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _mark_ended(work_dir: Path, reason: str) -> None:
    """Record why we are stopping the step; the first reason wins."""
    try:
        with open(work_dir / ENDED_BY_FILE, "x", encoding="utf-8") as fh:
            fh.write(reason)
    except FileExistsError:
        pass


def _ended_by(work_dir: Path) -> str | None:
    try:
        return (work_dir / ENDED_BY_FILE).read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None


def _stderr_tail(work_dir: Path) -> str:
    try:
        with open(work_dir / STDERR_LOG, "rb") as fh:
            fh.seek(max(0, os.fstat(fh.fileno()).st_size - STDERR_TAIL_BYTES))
            raw = fh.read()
    except OSError:
        return ""
    lines = raw.decode("utf-8", errors="replace").splitlines()[-STDERR_TAIL_LINES:]
    return "\n".join(lines)


def _describe_exit(rc: int | None) -> str:
    if rc is None:
        return "ended (its exit code is unknown after the agent re-attached)"
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = str(-rc)
        return f"exited with code {rc} (signal {name})"
    return f"exited with code {rc}"


class ProcessProvider(Provider):
    """Runs steps as local subprocesses. Config: ``python``, ``kill_grace_s``, ``env``."""

    type: ClassVar[str] = "process"
    capabilities: ClassVar[Capabilities] = Capabilities(
        cancel=True, recover=True, streaming_logs=True, python_steps=True
    )
    options_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "properties": {
            "env": {"type": "object", "additionalProperties": {"type": "string"}},
            "cwd": {"type": "string", "description": "relative paths start at the bundle dir"},
        },
        "additionalProperties": False,
    }
    _CONFIG_KEYS: ClassVar[frozenset[str]] = frozenset({"python", "kill_grace_s", "env"})

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
        self.env = _string_map(self.config.get("env", {}), "config 'env'", ProviderError)
        # Processes this instance started: waited on through asyncio (which also reaps them).
        self._procs: dict[int, asyncio.subprocess.Process] = {}

    def validate_options(self, options: Mapping[str, Any]) -> None:
        super().validate_options(options)
        _string_map(options.get("env", {}), "option 'env'", ProviderOptionsError)
        cwd = options.get("cwd")
        if cwd is not None and (not isinstance(cwd, str) or not cwd or "\0" in cwd):
            raise ProviderOptionsError(f"option 'cwd' must be a non-empty path string, not {cwd!r}")

    async def submit(self, spec: ExecutionSpec) -> Handle:
        self.validate_options(spec.options)
        work_dir = spec.work_dir.resolve()
        work_dir.mkdir(parents=True, exist_ok=True)
        bundle = str(spec.bundle_dir.resolve()) if spec.bundle_dir else None
        _write_json_atomic(
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
        path.append(_meridian_root())  # stepexec must import even from a bare bundle
        if env.get("PYTHONPATH"):
            path.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(path)
        env["MERIDIAN_ATTEMPT_ID"] = spec.attempt_id
        env["MERIDIAN_FLOW_RUN_ID"] = spec.flow_run_id
        env["MERIDIAN_STEP_KEY"] = spec.step_key
        return env

    async def wait(self, handle: Handle) -> Outcome:
        attempt = _Attempt.of(handle)
        rc, timed_out = await self._wait_exit(attempt)
        if timed_out:
            _mark_ended(attempt.work_dir, "timed_out")
            await self._terminate(attempt, self.kill_grace_s)
            rc = await self._reaped_returncode(attempt)
        # Children the step left behind die with it: no orphans outlive an attempt.
        await self._terminate(attempt, self.kill_grace_s)
        self._procs.pop(attempt.pid, None)
        return self._conclude(attempt, rc)

    async def _wait_exit(self, attempt: _Attempt) -> tuple[int | None, bool]:
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

    async def _reaped_returncode(self, attempt: _Attempt) -> int | None:
        proc = self._procs.get(attempt.pid)
        if proc is None:
            return None
        try:
            return await asyncio.wait_for(proc.wait(), 5.0)
        except TimeoutError:
            return None

    def _conclude(self, attempt: _Attempt, rc: int | None) -> Outcome:
        ended_by = _ended_by(attempt.work_dir)
        if ended_by == "timed_out":
            limit = f"{attempt.timeout_s:g}" if attempt.timeout_s is not None else "?"
            message = f"step exceeded its timeout of {limit} s and was killed"
            detail = timeout_detail(message)
            return Outcome(state="timed_out", exit_code=rc, error=detail)
        if ended_by == "cancelled":
            detail = cancelled_detail()
            return Outcome(state="cancelled", exit_code=rc, error=detail)
        outcome = read_outcome(attempt.work_dir)
        if outcome is not None:
            if rc is None:  # re-attached: stepexec exits 0 on success and 1 on failure
                rc = 0 if outcome.state == "succeeded" else 1
            return dataclasses.replace(outcome, exit_code=rc)
        message = f"step process {_describe_exit(rc)} without reporting an outcome"
        tail = _stderr_tail(attempt.work_dir)
        if tail:
            message += f"; last stderr lines:\n{tail}"
        detail = ErrorInfo("infrastructure", "providers.base.ProviderError", message)
        return Outcome(state="failed", exit_code=rc, error=detail)

    async def cancel(self, handle: Handle, grace_s: float) -> None:
        attempt = _Attempt.of(handle)
        if leader_alive(attempt.pid, attempt.start_time):
            _mark_ended(attempt.work_dir, "cancelled")
        await self._terminate(attempt, grace_s)

    async def _terminate(self, attempt: _Attempt, grace_s: float) -> None:
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
        attempt = _Attempt.of(handle)
        if leader_alive(attempt.pid, attempt.start_time):
            return True
        if _ended_by(attempt.work_dir) or (attempt.work_dir / OUTCOME_FILE).exists():
            return True
        # Gone without a word: report it lost, but do not leave its children running.
        await self._terminate(attempt, self.kill_grace_s)
        return False

    async def logs(self, handle: Handle) -> AsyncIterator[LogRecord]:
        attempt = _Attempt.of(handle)
        tails = [
            FileTail("stdout", attempt.work_dir / STDOUT_LOG),
            FileTail("stderr", attempt.work_dir / STDERR_LOG),
        ]
        try:
            while True:
                # Decide "ended" before reading so the last read covers everything written.
                ended = not self._active(attempt)
                got = False
                for tail in tails:
                    for record in tail.read():
                        got = True
                        yield record
                if ended:
                    for tail in tails:
                        for record in tail.finish():
                            yield record
                    return
                if not got:
                    await asyncio.sleep(_LOG_POLL_S)
        finally:
            for tail in tails:
                tail.close()

    def _active(self, attempt: _Attempt) -> bool:
        if leader_alive(attempt.pid, attempt.start_time):
            return True
        return owns_group(attempt.pid, attempt.start_time) and bool(group_members(attempt.pgid))

    async def close(self) -> None:
        # Running steps are deliberately left alone: a restarted agent re-attaches to them.
        self._procs.clear()


def _string_map(value: Any, what: str, error: type[ProviderError]) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise error(f"{what} must be an object of strings, not {type(value).__name__}")
    for key, item in value.items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            raise error(f"{what}: {key!r} is not a valid environment variable name")
        if not isinstance(item, str) or "\0" in item:
            raise error(f"{what}: the value of {key!r} must be a string, not {item!r}")
    return dict(value)
