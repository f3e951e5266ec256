"""Fleet simulator: K lightweight simulated agents on the real protocol, one control plane.

    python bench/fleet.py                          # K=1,000 agents, 1,000-step fan-out
    python bench/fleet.py --agents 200 --steps 1000
    python bench/fleet.py --agents 50 --idle-seconds 10 --steps 200   # a quick run

The control plane is started through the ``meridian`` CLI. K join tokens are issued in one
store session (as ``meridian tokens create`` does, K times), then 1-4 worker processes (this
script with ``--worker``) each enroll their share of agents with the real ``Enroll`` RPC
(``agent.enroll``: a key and CSR per agent, an identity directory per agent) and open one
mutual-TLS ``Connect`` stream per agent (``agent.channel.secure_channel``), many agents per
asyncio loop. Every simulated agent sends ``Hello``, reads ``Welcome`` and heartbeats at the
interval the control plane asks for, with frames built by ``agent.convert``.

Measured on the control plane process (``/proc/<pid>/stat`` and ``/proc/<pid>/status``):

* idle: CPU% of one core and RSS with K agents connected and nothing to do;
* dispatch: a flow fans out ``--steps`` trivial steps that only the simulated agents match;
  each agent reports RUNNING on assignment and, once accepted, FINISHED SUCCEEDED with a tiny
  result at once. Reported: durable steps/s (steps COMPLETED in the store, first
  ``step.pending`` to last ``step.completed``) and the control plane's CPU and RSS meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common

ENVIRONMENT = "fleet"
LABEL = ("fleet", "yes")
AGENTS_PER_PROCESS = 250
CONNECT_CONCURRENCY = 16

FLOW_SOURCE = '''\
"""Flow of bench/fleet.py: trivial steps only the simulated agents match."""

from meridian import flow, step, wait


@step(target="fleet=yes")
def noop(i: int) -> int:
    return i


@flow
def fanout(n: int) -> int:
    return len(wait(noop.map(range(n))))
'''


# ---- the worker: simulated agents in one process --------------------------------------------


@dataclass
class Counters:
    connected: int = 0
    assigned: int = 0
    finished: int = 0
    rejected: int = 0
    errors: int = 0


class SimAgent:
    """One simulated agent: its identity, one Connect stream, immediate trivial outcomes."""

    def __init__(self, data_dir: Path, capacity: int, counters: Counters) -> None:
        from agent.identity import load_identity

        self.identity = load_identity(data_dir)
        self.capacity = capacity
        self.counters = counters
        self.settled = asyncio.Event()  # connected, or failed to
        self._call: Any = None
        self._seq = 0
        self._lock = asyncio.Lock()
        self._held: dict[str, int] = {}  # attempt id -> fencing token

    async def run(self, stop: asyncio.Event, gate: asyncio.Semaphore) -> None:
        try:
            await self._run(stop, gate)
        except Exception as exc:
            self.counters.errors += 1
            print(f"{self.identity.agent_id}: {exc!r}", file=sys.stderr)
        finally:
            self.settled.set()

    async def _run(self, stop: asyncio.Event, gate: asyncio.Semaphore) -> None:
        from agent import convert
        from agent.channel import secure_channel
        from agent.reports import HeartbeatInfo, HelloInfo, ProviderInfo

        ident = self.identity
        target = ident.agent_address or ident.control_plane
        async with gate:  # bound the TLS handshakes in flight
            channel = secure_channel(
                target, ca_pem=ident.ca_pem, key_pem=ident.key_pem, cert_pem=ident.cert_pem
            )
            call = self._call = convert.new_stub(channel).Connect()
            hello = HelloInfo(
                version="bench-fleet",
                labels={LABEL[0]: LABEL[1]},
                providers=(ProviderInfo("process", "{}"),),
                capacity=self.capacity,
                held_attempts=(),
                hostname=socket.gethostname(),
                draining=False,
            )
            await call.write(convert.hello_to_proto(hello))
            welcome = convert.action_from_proto(await call.read())
        self._seq = int(getattr(welcome, "last_applied_seq", 0))
        interval = float(getattr(welcome, "heartbeat_interval_s", 5.0)) or 5.0
        self.counters.connected += 1
        self.settled.set()

        async def heartbeats() -> None:
            while True:
                await asyncio.sleep(interval)
                beat = HeartbeatInfo(in_use=len(self._held), held_attempts=(), draining=False)
                async with self._lock:
                    await call.write(convert.heartbeat_to_proto(beat))

        beating = asyncio.create_task(heartbeats())
        reading = asyncio.create_task(self._read(call))
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({beating, reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
            for task in (beating, reading):
                if task.done() and not task.cancelled() and task.exception() is not None:
                    self.counters.errors += 1
        finally:
            for pending in (beating, reading, stopping):
                pending.cancel()
            call.cancel()
            await channel.close(grace=None)

    async def _report(self, items: Sequence[tuple[str, int, Any]]) -> None:
        from agent import convert
        from agent.journal import JournalEntry

        now_ms = int(time.time() * 1000)
        entries = []
        for attempt_id, token, body in items:
            self._seq += 1
            kind, payload = convert.encode_report(body, now_ms)
            entries.append(JournalEntry(self._seq, kind, attempt_id, token, payload))
        async with self._lock:
            await self._call.write(convert.report_batch_to_proto(entries))

    async def _read(self, call: Any) -> None:
        import grpc

        from agent import convert
        from agent.actions import AssignAction, CancelAction, DecisionAction
        from agent.reports import AttemptFinished, ProposeRunning

        eof: Any = grpc.aio.EOF  # type: ignore[attr-defined]
        while True:
            frame = await call.read()
            if frame is eof:
                return
            action = convert.action_from_proto(frame)
            if isinstance(action, AssignAction):
                items: list[tuple[str, int, Any]] = []
                for a in action.assignments:
                    self._held[a.attempt_id] = a.fencing_token
                    items.append((a.attempt_id, a.fencing_token, ProposeRunning()))
                self.counters.assigned += len(items)
                await self._report(items)
            elif isinstance(action, DecisionAction):
                done: list[tuple[str, int, Any]] = []
                for d in action.decisions:
                    token = self._held.pop(d.attempt_id, None)
                    if token is None:
                        continue
                    if d.verdict == "accept":
                        done.append((d.attempt_id, token, AttemptFinished("succeeded", "1")))
                    else:
                        self.counters.rejected += 1
                self.counters.finished += len(done)
                if done:
                    await self._report(done)
            elif isinstance(action, CancelAction):
                token = self._held.pop(action.attempt_id, None)
                if token is not None:
                    await self._report(
                        [(action.attempt_id, token, AttemptFinished("cancelled", ""))]
                    )


def enroll_all(spec: dict[str, Any]) -> list[Path]:
    from agent.enroll import enroll

    root = Path(spec["root"])

    def one(item: tuple[str, str]) -> Path:
        name, token = item
        data_dir = root / name
        enroll(spec["address"], Path(spec["ca_file"]), token, data_dir, name)
        return data_dir

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(one, [(n, t) for n, t in spec["agents"]]))


async def serve(spec: dict[str, Any], dirs: Sequence[Path]) -> Counters:
    counters = Counters()
    stop = asyncio.Event()
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    agents = [SimAgent(d, int(spec["capacity"]), counters) for d in dirs]
    tasks = [asyncio.create_task(a.run(stop, gate)) for a in agents]
    # The parent closes our stdin to stop us; the lifetime bounds us if it never does.
    eof = asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    settled = asyncio.ensure_future(asyncio.gather(*(a.settled.wait() for a in agents)))
    await asyncio.wait({settled, eof}, timeout=float(spec["connect_timeout_s"]),
                       return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
    settled.cancel()
    print(f"connected {counters.connected}", flush=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(eof), float(spec["lifetime_s"]))
    stop.set()
    await asyncio.wait(tasks, timeout=10)
    return counters


def worker(spec_file: Path) -> int:
    spec = json.loads(spec_file.read_text())
    dirs = enroll_all(spec)
    print(f"enrolled {len(dirs)}", flush=True)
    counters = asyncio.run(serve(spec, dirs))
    Path(spec["stats_file"]).write_text(json.dumps(counters.__dict__))
    os._exit(0)  # the stdin reader thread may still block; nothing else is left to flush


# ---- the parent: control plane, workers, measurements ---------------------------------------


def issue_join_tokens(estate: common.Estate, count: int) -> list[str]:
    """``count`` one-time join tokens in one store session: ``meridian tokens create`` does
    the same one token per process start, which would take minutes for 1,000 agents."""
    from control_plane.auth.enrollment import create_join_token_row
    from control_plane.store.db import Store, sqlite_url
    from meridian.core.clock import utcnow

    store = Store(estate.db_url or sqlite_url(estate.server_dir / "meridian.db"))
    try:
        return [
            store.run_sync(create_join_token_row, ENVIRONMENT, 3600.0, utcnow(), None)
            for _ in range(count)
        ]
    finally:
        store.close()


class Workers:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        self.stats_files: list[Path] = []

    def start(
        self, estate: common.Estate, tokens: Sequence[str], processes: int, args: Any
    ) -> None:
        per = math.ceil(len(tokens) / processes)
        for p in range(processes):
            share = tokens[p * per : (p + 1) * per]
            if not share:
                continue
            names = [f"sim-{p}-{i}" for i in range(len(share))]
            spec = {
                "address": estate.address,
                "ca_file": str(estate.ca_file),
                "root": str(estate.root / "sim" / str(p)),
                "agents": list(zip(names, share, strict=True)),
                "capacity": args.capacity,
                "connect_timeout_s": args.connect_timeout,
                "lifetime_s": args.connect_timeout + args.idle_seconds + args.run_timeout + 120,
                "stats_file": str(estate.root / f"sim-{p}.stats.json"),
            }
            spec_file = estate.root / f"sim-{p}.json"
            spec_file.write_text(json.dumps(spec))
            self.stats_files.append(Path(spec["stats_file"]))
            log = open(estate.root / f"sim-{p}.log", "w")  # noqa: SIM115 - child keeps it
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_file)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                    env=common.quiet_env(), start_new_session=True,
                )
            )  # fmt: skip
            log.close()

    def wait_connected(self, timeout_s: float) -> int:
        """Sum of 'connected N' lines, one per worker (each waits for all of its agents)."""
        total = 0
        deadline = time.monotonic() + timeout_s
        for proc in self.procs:
            assert proc.stdout is not None
            while time.monotonic() < deadline:
                line = proc.stdout.readline()
                if not line:
                    raise RuntimeError("a fleet worker exited early (see sim-*.log with --keep)")
                if line.startswith("connected "):
                    total += int(line.split()[1])
                    break
        return total

    def stop(self) -> dict[str, int]:
        for proc in self.procs:
            with contextlib.suppress(OSError):
                if proc.stdin is not None:
                    proc.stdin.close()
        totals: dict[str, int] = {}
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                common.stop_process(proc)
        for path in self.stats_files:
            with contextlib.suppress(OSError, ValueError):
                for key, value in json.loads(path.read_text()).items():
                    totals[key] = totals.get(key, 0) + int(value)
        return totals


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=1000, help="simulated agents (K)")
    parser.add_argument("--processes", type=int, default=0,
                        help="worker processes (default: one per 250 agents, 1-4)")  # fmt: skip
    parser.add_argument("--capacity", type=int, default=4, help="slots per simulated agent")
    parser.add_argument("--steps", type=int, default=1000, help="fan-out size (0: skip)")
    parser.add_argument("--idle-seconds", type=float, default=30.0, help="idle sample length")
    parser.add_argument("--connect-timeout", type=float, default=600.0, metavar="SECONDS")
    parser.add_argument("--run-timeout", type=float, default=900.0, metavar="SECONDS")
    parser.add_argument("--db", metavar="URL", help="database URL (default: SQLite)")
    parser.add_argument("--worker", metavar="SPEC", help=argparse.SUPPRESS)
    common.common_args(parser)
    args = parser.parse_args(argv)
    if args.agents < 1 or args.capacity < 1 or args.steps < 0 or args.idle_seconds <= 0:
        parser.error("--agents/--capacity must be >= 1, --steps >= 0, --idle-seconds > 0")
    if not args.processes:
        args.processes = max(1, min(4, math.ceil(args.agents / AGENTS_PER_PROCESS)))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(Path(args.worker))
    common.install_sigterm()
    common.print_banner("fleet")
    config = {"agents": args.agents, "processes": args.processes, "capacity": args.capacity,
              "steps": args.steps, "idle_seconds": args.idle_seconds,
              "database": "postgresql" if args.db else "sqlite"}  # fmt: skip
    report = common.Report("fleet", config)
    workers = Workers()
    error = ""
    with common.estate(args.keep, args.db) as estate:
        try:
            cp = {"control-plane": estate.pid("control-plane")}
            report.results["control_plane_alone"] = common.sample_usage(cp, 3.0)["control-plane"]
            started = time.monotonic()
            tokens = issue_join_tokens(estate, args.agents)
            workers.start(estate, tokens, args.processes, args)
            connected = workers.wait_connected(args.connect_timeout)
            report.results["connect_s"] = round(time.monotonic() - started, 1)
            report.results["agents_connected"] = connected
            took = report.results["connect_s"]
            print(f"{connected}/{args.agents} simulated agents connected in {took}s; "
                  f"sampling idle for {args.idle_seconds:g}s")  # fmt: skip
            time.sleep(min(5.0, args.idle_seconds))  # let the connect burst settle
            idle: dict[str, Any] = dict(common.sample_usage(cp, args.idle_seconds)["control-plane"])
            idle["load_average"] = common.load_average()
            report.results["idle"] = idle
            if args.steps:
                flow_file = common.write_flow(estate.root, FLOW_SOURCE)
                meter = common.UsageMeter(cp)
                meter.start()
                flow = common.run_flow_timed(
                    estate, flow_file, "fanout", {"n": str(args.steps)}, args.run_timeout
                )
                usage = meter.stop()["control-plane"]
                report.results["dispatch"] = dispatch_numbers(flow, args.steps, usage)
                error = flow.error
        finally:
            report.results["simulated"] = workers.stop()
    print_summary(report.results)
    report.write(args.out)
    if error:
        print(f"ERROR: {error}", file=sys.stderr)
    return 1 if error else 0


def dispatch_numbers(
    flow: common.FlowResult, steps: int, usage: dict[str, float]
) -> dict[str, Any]:
    times = common.first_times(flow.detail.events)
    pending = sorted(k["step.pending"] for k in times.values() if "step.pending" in k)
    done = sorted(k["step.completed"] for k in times.values() if "step.completed" in k)
    durable = common.completed_steps(flow.detail)
    span_s = (done[-1] - pending[0]).total_seconds() if pending and done else 0.0
    return {
        "run_id": flow.run_id,
        "state": flow.state,
        "error": flow.error,
        "steps": steps,
        "steps_completed_in_store": durable,
        "durable_steps_per_s": round(durable / span_s, 2) if span_s > 0 else None,
        "wall_s": round(flow.wall_s, 2),
        "control_plane": usage,
        "load_average": common.load_average(),
    }


def print_summary(results: dict[str, Any]) -> None:
    rows: list[list[Any]] = []
    alone = results.get("control_plane_alone", {})
    rows.append(["control plane, no agents", alone.get("cpu_percent"), alone.get("rss_mib"),
                 None, None])  # fmt: skip
    idle = results.get("idle")
    if idle:
        rows.append([f"idle, {results['agents_connected']} agents", idle["cpu_percent"],
                     idle["rss_mib"], None, idle["load_average"][0]])  # fmt: skip
    d = results.get("dispatch")
    if d:
        cp = d["control_plane"]
        rows.append([f"fan-out of {d['steps']}", cp["cpu_percent"], cp["peak_rss_mib"],
                     d["durable_steps_per_s"], d["load_average"][0]])  # fmt: skip
    print()
    common.print_table(["control plane", "CPU %", "RSS MiB", "durable/s", "load1"], rows)
    print(f"  simulated agents: {results.get('simulated')}")


if __name__ == "__main__":
    sys.exit(main())
