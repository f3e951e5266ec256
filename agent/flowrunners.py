"""Hosted flow runners on this agent (decision 0018): one ``meridian.flowexec`` process per
flow body the control plane hands here with ``AssignRunner``.

A runner is an ordinary SDK client of the control plane's client listener: it renews its run's
lease itself, so its liveness never depends on this agent's connection. Each runs in its own
process group (``start_new_session``) with the run-scoped token in its environment (never on
its command line), its output going to ``work/runners/<run>-<epoch>/runner.log``.

A runner is a child of the agent's fork server (``agent/forkserver.py``, ``meridian.flowzygote``:
no interpreter start, no imports) when the server is up, else a fresh
``python -m meridian.flowexec`` — the server is never waited for. A forked runner's exit code
comes from the server; if the server dies first, its runners are watched by pid and start time
like re-attached ones (exit code unknown) and the server is restarted with backoff. A request
the server took but never answered is reported as not started (-3), never retried as a fresh
process: a child might run it, and two runners of one epoch are not fenced from each other (a
``started`` that comes after that is killed). A runner the server is forking when the agent
stops is waited for and recorded in the state file, like any other.

- ``CancelRunner``: SIGTERM to the group, SIGKILL after the grace.
- A runner that ends is reported with ``RunnerExited`` (the control plane ignores the report
  of a run that ended or moved on); reports wait in the state file until they could be sent.
- The pid and start time of each runner are kept in ``flowrunners.json`` in the data
  directory (``agent/runnerstate.py``): a restarted agent re-attaches to runners still alive
  and lists them as held.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from agent.actions import AssignRunnerAction, CancelRunnerAction
from agent.forkserver import MODULE as FORK_SERVER_MODULE
from agent.forkserver import ForkServerClient
from agent.runnerstate import (
    STATE_FILE,
    RunnerExit,
    RunnerProcess,
    RunnerStateFile,
    alive,
    process_start_time,
)
from meridian.core.kinds import RunnerNotStarted

log = logging.getLogger("meridian.agent.flowrunners")

LOG_TAIL_BYTES = 2000
# How often a re-attached runner (not our child: no wait()) is checked, and pending exit
# reports are tried again.
POLL_S = 0.5
# An assignment that finds every runner slot taken waits this long for one to free up before
# it is refused. The control plane frees a run's slot when the run finishes, a moment before
# its runner process has exited here: a burst of runs must not be refused for that moment.
SLOT_WAIT_S = 30.0

SendFrame = Callable[[str, int, int, str], Awaitable[None]]


def _tail(path: Path) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - LOG_TAIL_BYTES))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


class FlowRunners:
    """The hosted runners of this agent: spawn, cancel, re-attach, report their exits."""

    def __init__(
        self,
        slots: int,
        data_dir: Path,
        bundle_dir: Callable[[str], Awaitable[Path]],
        control_host: str,
        *,
        env: Mapping[str, str] | None = None,
        command: Sequence[str] = (),
        fork_server: bool = True,
        fork_server_command: Sequence[str] = (),
        environment: str = "",
    ) -> None:
        """``command``: what a fresh runner runs (default ``python -m meridian.flowexec``).
        ``fork_server``: fork runners from a pre-imported server (``python -m
        meridian.flowzygote``, or ``fork_server_command``); a custom ``command`` without a
        ``fork_server_command`` turns it off (the default server runs ``meridian.flowexec``).
        ``environment``: this agent's, what ``meridian.context()`` says in the bodies."""
        self.slots = slots
        self._data_dir = Path(data_dir)
        self._state = RunnerStateFile(self._data_dir / STATE_FILE)
        self._bundle_dir = bundle_dir
        self._control_host = control_host
        self._environment = environment
        self._env = dict(os.environ if env is None else env)
        self._command = tuple(command) or (sys.executable, "-m", "meridian.flowexec")
        server_command = tuple(fork_server_command) or (
            () if command else (sys.executable, "-m", FORK_SERVER_MODULE)
        )
        self._fork_server = (
            ForkServerClient(server_command, self._base_env())
            if fork_server and server_command and slots > 0
            else None
        )
        self._procs: dict[str, RunnerProcess] = {}
        # Assignments between taking a slot and their process being in _procs.
        self._starting = 0
        # The newest epoch of each run whose assignment is under way (waiting for a slot, or
        # its runner being started), until its runner is in _procs: a redelivered frame must
        # not start a second runner of that epoch. Assignments of one run go one at a time.
        self._assigning: dict[str, int] = {}
        self._run_locks: dict[str, asyncio.Lock] = {}
        self._slot_freed = asyncio.Condition()
        self._exits: list[RunnerExit] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._send: SendFrame | None = None
        self._poller: asyncio.Task[None] | None = None

    # ---- lifecycle ------------------------------------------------------------------------

    async def start(self, send: SendFrame) -> None:
        """Load the state file, re-attach to runners still alive, start reporting exits."""
        self._send = send
        state = await asyncio.to_thread(self._state.load)
        for entry in state.get("runners", []):
            proc = RunnerProcess(**entry)
            if alive(proc):
                log.info(
                    "re-attached to the flow runner of run %s (pid %d)", proc.flow_run_id, proc.pid
                )
                self._procs[proc.flow_run_id] = proc
                self._spawn_task(self._watch_foreign(proc))
            else:
                tail = _tail(Path(proc.work_dir) / "runner.log")
                self._exits.append(
                    RunnerExit(
                        proc.flow_run_id, proc.epoch, -1, f"ended while the agent was down; {tail}"
                    )
                )
        self._exits.extend(RunnerExit(**e) for e in state.get("exits", []))
        await self._save()
        self._poller = asyncio.ensure_future(self._report_exits())
        if self._fork_server is not None:
            self._fork_server.start()  # in the background: runners start fresh meanwhile

    async def close(self) -> None:
        """Stop watching; the runner processes go on (a restarted agent re-attaches). A runner
        the fork server was starting is waited for and recorded; the server is stopped after."""
        tasks = [*self._tasks, *([self._poller] if self._poller else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._fork_server is not None:
            await self._fork_server.close()
        await self._save()

    def fork_server_pid(self) -> int | None:
        """The fork server's pid while it is up (None: runners start as fresh processes)."""
        return self._fork_server.pid if self._fork_server is not None else None

    def held(self) -> tuple[tuple[str, int], ...]:
        return tuple((p.flow_run_id, p.epoch) for p in self._procs.values())

    # ---- frames ---------------------------------------------------------------------------

    def handle(self, action: AssignRunnerAction | CancelRunnerAction) -> None:
        if isinstance(action, AssignRunnerAction):
            self._spawn_task(self._assign(action))
        else:
            self._spawn_task(self._cancel(action))

    async def _assign(self, a: AssignRunnerAction) -> None:
        run, epoch = a.flow_run_id, a.runner_epoch
        current = self._procs.get(run)
        if current is not None and current.epoch >= epoch:
            return  # redelivered, or older than what runs
        if self._assigning.get(run, -1) >= epoch:
            return  # redelivered (or older) while that assignment is still under way
        self._assigning[run] = epoch
        lock = self._run_locks.setdefault(run, asyncio.Lock())
        try:
            async with lock:  # an older epoch's assignment still under way finishes first
                if self._assigning.get(run) == epoch:  # else a newer epoch superseded it
                    await self._assign_now(a)
        finally:
            if self._assigning.get(run) == epoch:
                del self._assigning[run]
                self._run_locks.pop(run, None)

    async def _assign_now(self, a: AssignRunnerAction) -> None:
        run, epoch = a.flow_run_id, a.runner_epoch
        current = self._procs.get(run)
        if current is not None and current.epoch >= epoch:
            return
        if current is not None:  # an older epoch of the same run: it was fenced anyway
            await self._stop(current, 5.0)
        if not await self._take_slot(SLOT_WAIT_S):
            await self._exited(
                run,
                epoch,
                int(RunnerNotStarted.NO_FREE_SLOT),
                f"the agent has no free runner slot (all {self.slots} still busy after "
                f"{SLOT_WAIT_S:g} s)",
            )
            return
        if self._assigning.get(run) != epoch:  # superseded while it waited for the slot
            await self._release_slot()
            return
        try:
            bundle = await self._bundle_dir(a.bundle_sha256)
            proc = await self._spawn(a, bundle)
        except Exception as exc:
            log.warning("could not start the flow runner of run %s: %s", run, exc)
            await self._release_slot()
            await self._exited(
                run, epoch, int(RunnerNotStarted.COULD_NOT_START), f"could not start: {exc}"
            )
            return
        self._procs[run] = proc
        await self._release_slot()  # counted in _procs from now on
        await self._save()

    async def _take_slot(self, timeout_s: float) -> bool:
        """Reserve a runner slot, waiting up to ``timeout_s`` for one to free up."""
        async with self._slot_freed:
            try:
                async with asyncio.timeout(timeout_s):
                    await self._slot_freed.wait_for(
                        lambda: len(self._procs) + self._starting < self.slots
                    )
            except TimeoutError:
                return False
            self._starting += 1
            return True

    async def _release_slot(self) -> None:
        async with self._slot_freed:
            self._starting -= 1
            self._slot_freed.notify_all()

    async def _slot_ended(self) -> None:
        async with self._slot_freed:
            self._slot_freed.notify_all()

    def _base_env(self) -> dict[str, str]:
        """The agent's environment a runner starts from (and the fork server runs in)."""
        env = {k: v for k, v in self._env.items() if not k.startswith("MERIDIAN_FLOWEXEC_")}
        env.pop("MERIDIAN_TOKEN", None)
        return env

    async def _spawn(self, a: AssignRunnerAction, bundle: Path) -> RunnerProcess:
        work = self._data_dir / "work" / "runners" / f"{a.flow_run_id}-{a.runner_epoch}"
        await asyncio.to_thread(work.mkdir, parents=True, exist_ok=True)
        ca_file = work / "ca.crt"
        await asyncio.to_thread(ca_file.write_bytes, a.ca_certificate_pem)
        address = a.client_address
        if address.startswith(":"):
            address = self._control_host + address
        env = self._base_env()
        env.update(
            MERIDIAN_FLOWEXEC_RUN_ID=a.flow_run_id,
            MERIDIAN_FLOWEXEC_EPOCH=str(a.runner_epoch),
            MERIDIAN_FLOWEXEC_ADDRESS=address,
            MERIDIAN_FLOWEXEC_CA_FILE=str(ca_file),
            MERIDIAN_FLOWEXEC_BUNDLE_DIR=str(bundle),
            MERIDIAN_FLOWEXEC_ENTRYPOINT=a.entrypoint,
            MERIDIAN_FLOWEXEC_ENVIRONMENT=self._environment,
        )
        log_path = work / "runner.log"
        proc = await self._fork(a, env, work, log_path)
        how = "forked by the fork server"
        if proc is None:
            how = "a fresh process"
            env["MERIDIAN_FLOWEXEC_TOKEN"] = a.runner_token
            proc = await self._start_fresh(a, env, work, log_path)
        log.info(
            "started the flow runner of run %s (epoch %d, pid %d, %s)",
            a.flow_run_id,
            a.runner_epoch,
            proc.pid,
            how,
        )
        return proc

    async def _start_fresh(
        self, a: AssignRunnerAction, env: Mapping[str, str], work: Path, log_path: Path
    ) -> RunnerProcess:
        with log_path.open("ab") as out:
            child = await asyncio.create_subprocess_exec(
                *self._command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                cwd=str(work),
                env=env,
                start_new_session=True,  # its own group: cancel stops all of it
            )
        start = process_start_time(child.pid) or ""
        proc = RunnerProcess(a.flow_run_id, a.runner_epoch, child.pid, start, str(work))
        self._spawn_task(self._watch_child(proc, child))
        return proc

    async def _fork(
        self, a: AssignRunnerAction, env: Mapping[str, str], work: Path, log_path: Path
    ) -> RunnerProcess | None:
        """The runner as a child of the fork server; None when it is not up (or refused)."""
        if self._fork_server is None or not self._fork_server.up:
            return None
        request = asyncio.ensure_future(
            self._fork_server.fork(
                a.flow_run_id, a.runner_epoch, env, str(work), str(log_path), a.runner_token
            )
        )
        try:
            forked = await asyncio.shield(request)
        except asyncio.CancelledError:
            # The agent is stopping while the server may be forking this runner: let the
            # exchange end (bounded by the server's reply timeout) and record a runner it
            # started, so the state file has it and a restarted agent re-attaches to it.
            with contextlib.suppress(Exception):
                late = await request
                current = self._procs.get(a.flow_run_id)
                if late is not None and (current is None or current.epoch < a.runner_epoch):
                    start = process_start_time(late.pid) or ""
                    self._procs[a.flow_run_id] = RunnerProcess(
                        a.flow_run_id, a.runner_epoch, late.pid, start, str(work)
                    )
                    log.info(
                        "the flow runner of run %s (pid %d) started while the agent stopped",
                        a.flow_run_id,
                        late.pid,
                    )
            raise
        if forked is None:
            return None
        start = process_start_time(forked.pid) or ""
        proc = RunnerProcess(a.flow_run_id, a.runner_epoch, forked.pid, start, str(work))
        self._spawn_task(self._watch_forked(proc, forked.exit_code))
        return proc

    async def _cancel(self, c: CancelRunnerAction) -> None:
        proc = self._procs.get(c.flow_run_id)
        if proc is None or proc.epoch > c.runner_epoch:
            return
        log.info("stopping the flow runner of run %s: %s", c.flow_run_id, c.reason)
        await self._stop(proc, c.grace_s)

    async def _stop(self, proc: RunnerProcess, grace_s: float) -> None:
        """SIGTERM the runner's group, SIGKILL it after ``grace_s``."""
        _signal_group(proc.pid, signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, grace_s)
        while alive(proc) and loop.time() < deadline:
            await asyncio.sleep(0.1)
        _signal_group(proc.pid, signal.SIGKILL)

    # ---- exits ----------------------------------------------------------------------------

    async def _watch_child(self, proc: RunnerProcess, child: asyncio.subprocess.Process) -> None:
        code = await child.wait()
        _signal_group(proc.pid, signal.SIGKILL)  # nothing of a finished runner stays behind
        await self._ended(proc, code)

    async def _watch_forked(
        self, proc: RunnerProcess, exit_code: asyncio.Future[int | None]
    ) -> None:
        code = await exit_code
        if code is None:  # the fork server ended first: watch it as a re-attached runner
            await self._watch_foreign(proc)
            return
        _signal_group(proc.pid, signal.SIGKILL)  # nothing of a finished runner stays behind
        await self._ended(proc, code)

    async def _watch_foreign(self, proc: RunnerProcess) -> None:
        while alive(proc):
            await asyncio.sleep(POLL_S)
        await self._ended(proc, -1)  # not our child: its exit code is unknown

    async def _ended(self, proc: RunnerProcess, code: int) -> None:
        if self._procs.get(proc.flow_run_id) is proc:
            del self._procs[proc.flow_run_id]
            await self._slot_ended()
        tail = await asyncio.to_thread(_tail, Path(proc.work_dir) / "runner.log") if code else ""
        log.info("the flow runner of run %s exited with code %d", proc.flow_run_id, code)
        await self._exited(proc.flow_run_id, proc.epoch, code, tail)

    async def _exited(self, run_id: str, epoch: int, code: int, message: str) -> None:
        self._exits.append(RunnerExit(run_id, epoch, code, message[-LOG_TAIL_BYTES:]))
        await self._save()
        await self._flush_exits()

    async def _flush_exits(self) -> None:
        while self._exits and self._send is not None:
            report = self._exits[0]
            try:
                await self._send(report.flow_run_id, report.epoch, report.exit_code, report.message)
            except Exception as exc:  # not connected: the poller tries again
                log.debug("runner exit report not sent yet: %s", exc)
                return
            self._exits.pop(0)
            await self._save()

    async def _report_exits(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            await self._flush_exits()

    # ---- state ----------------------------------------------------------------------------

    def _spawn_task(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("flow runner task failed: %r", t.exception())

        task.add_done_callback(done)

    async def _save(self) -> None:
        # Snapshots the runners and pending exits now, before any await (RunnerStateFile.save).
        await self._state.save(self._procs.values(), self._exits)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
