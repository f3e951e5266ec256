"""Dispatch benchmark: one control plane and three agents on this machine, N trivial steps.

    python bench/dispatch.py [--steps N] [--mode sequential|map|both] [--db URL]
                             [--capacity C] [--agents 1-3] [--out FILE]

The control plane and the agents run as separate processes started through the ``meridian``
CLI (as an operator would start them); this process is the flow runner and drives one flow per
mode through ``meridian.sdk.runner.run_flow``:

* ``sequential``: the flow body calls the step N times, one after the other;
* ``map``: the flow body fans out with ``step.map(range(N))`` and waits for all.

Every number except wall-clock throughput comes from the run's own recorded events
(``ControlClient.get_run(run_id).events``, server timestamps with millisecond resolution):

* submit -> start: ``step.pending`` -> ``attempt.running`` per step key. ``attempt.running`` is
  written when the control plane accepts the agent's RUNNING proposal, *before* the provider
  starts the step's process, so this is the orchestration latency alone;
* queued -> assigned, assigned -> running (the agent round trip);
* running -> resource: the process provider spawning the step's Python process;
* running -> succeeded: the step process's whole life as seen by the control plane.

The process provider starts a fresh Python interpreter per step, which bounds throughput on a
small machine; the output says so and shows the interpreter start-up cost measured here.
Memory is VmRSS (and the peak, VmHWM) from /proc/<pid>/status at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import common

from meridian import models
from meridian.client import ControlClient
from meridian.sdk.runner import run_flow

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
ENVIRONMENTS = ("bench-a", "bench-b", "bench-c")
TARGET_LABEL = ("bench", "yes")
DEFAULT_STEPS = 80
DEFAULT_CAPACITY = 4

FLOW_SOURCE = '''\
"""Flows of bench/dispatch.py: a step that does nothing, called N times."""

from meridian import flow, step, wait


@step(target="bench=yes")
def noop(i: int) -> int:
    return i


@flow
def sequential(n: int) -> int:
    total = 0
    for i in range(n):
        total += noop(i)
    return total


@flow
def fanout(n: int) -> int:
    return sum(wait(noop.map(range(n))))
'''


# ---- processes ---------------------------------------------------------------------------


@dataclass
class Estate:
    """The control plane and the three agents of this benchmark (``common.Estate``)."""

    root: Path
    db_url: str | None
    capacity: int
    agents: int = len(ENVIRONMENTS)
    base: common.Estate = field(init=False)

    def __post_init__(self) -> None:
        self.base = common.Estate(self.root, self.db_url)

    @property
    def address(self) -> str:
        return self.base.address

    def client(self) -> ControlClient:
        # The control plane requires an API token: start() creates an operator token with
        # `meridian api-tokens create`, as an operator would.
        client: ControlClient = self.base.client(timeout_s=30)
        return client

    def start(self) -> None:
        self.base.start()
        for environment in ENVIRONMENTS[: self.agents]:
            self.base.add_agent(
                environment,
                labels={TARGET_LABEL[0]: TARGET_LABEL[1], "env": environment},
                capacity=self.capacity,
            )

    def logs(self) -> str:
        return self.base.logs()

    def memory(self) -> dict[str, dict[str, int]]:
        return {name: proc_memory(proc.pid) for name, proc in self.base.processes.items()}

    def stop(self) -> None:
        self.base.stop()


proc_memory = common.proc_memory_kib


# ---- measuring -----------------------------------------------------------------------------


percentiles = common.percentiles


# (name, from event kind, to event kind); both events belong to the same step key.
INTERVALS = (
    ("submit_to_start", "step.pending", "attempt.running"),
    ("queued_to_assigned", "attempt.queued", "attempt.assigned"),
    ("assigned_to_running", "attempt.assigned", "attempt.running"),
    ("running_to_spawned", "attempt.running", "attempt.resource"),
    ("spawned_to_succeeded", "attempt.resource", "attempt.succeeded"),
    ("running_to_succeeded", "attempt.running", "attempt.succeeded"),
)


first_times = common.first_times


def turnarounds(times: Mapping[str, Mapping[str, dt.datetime]]) -> list[float]:
    """Step i's completion to step i+1's submission, for steps submitted one at a time: the
    watch stream, the flow body and SubmitSteps in the flow runner. Meaningless for ``map``,
    where every step is submitted before any completes (those pairs are skipped)."""
    steps = sorted(
        (k for k in times.values() if "step.pending" in k and "step.completed" in k),
        key=lambda k: k["step.pending"],
    )
    gaps = [
        (after["step.pending"] - before["step.completed"]).total_seconds() * 1000
        for before, after in itertools.pairwise(steps)
    ]
    return [gap for gap in gaps if gap >= 0]


def analyse(detail: models.RunDetail, wall_s: float, steps: int, slots: int) -> dict[str, Any]:
    times = first_times(detail.events)
    latencies: dict[str, Any] = {}
    # The first `slots` steps to start found a free slot at once: their submit -> start is the
    # dispatch latency of a burst, without the wait for a slot that later steps include.
    started = sorted(
        (k for k in times.values() if "step.pending" in k and "attempt.running" in k),
        key=lambda k: k["attempt.running"],
    )[:slots]
    latencies["submit_to_start_first_wave"] = percentiles(
        [(k["attempt.running"] - k["step.pending"]).total_seconds() * 1000 for k in started]
    )
    for name, start, end in INTERVALS:
        samples = [
            (kinds[end] - kinds[start]).total_seconds() * 1000
            for kinds in times.values()
            if start in kinds and end in kinds
        ]
        latencies[name] = percentiles(samples)
    latencies["runner_turnaround"] = percentiles(turnarounds(times))
    pending = [k["step.pending"] for k in times.values() if "step.pending" in k]
    running = [k["attempt.running"] for k in times.values() if "attempt.running" in k]
    done = [k["step.completed"] for k in times.values() if "step.completed" in k]
    first = min(pending, default=None)

    def seconds_since_first(times: list[dt.datetime]) -> float:
        return (max(times) - first).total_seconds() if times and first else 0.0

    span_s = seconds_since_first(done)
    dispatch_span_s = seconds_since_first(running)
    return {
        "run_id": detail.flow_run_id,
        "state": detail.state,
        "steps": steps,
        "steps_completed": len(done),
        "wall_s": round(wall_s, 3),
        "steps_per_s_wall": round(steps / wall_s, 2),
        "steps_per_s_server": round(len(done) / span_s, 2) if span_s > 0 else None,
        # First submission to the last attempt accepted as RUNNING: how fast work was handed
        # out; bounded by free slots, which free up only as step processes finish.
        "dispatched_per_s": round(len(running) / dispatch_span_s, 2)
        if dispatch_span_s > 0
        else None,
        "latency_ms": latencies,
    }


def interpreter_startup_ms(samples: int = 10) -> dict[str, Any]:
    """What a step process costs before it runs any user code: a bare interpreter, and one
    importing the step executor."""
    out: dict[str, Any] = {}
    for name, code in (
        ("python_bare", "pass"),
        ("python_import_stepexec", "import meridian.stepexec"),
    ):
        durations = []
        for _ in range(samples):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True, env=common.quiet_env())
            durations.append((time.perf_counter() - start) * 1000)
        out[name] = percentiles(durations)
    return out


def run_mode(
    estate: Estate, flow_file: Path, mode: str, steps: int, timeout_s: float
) -> dict[str, Any]:
    """Run one mode's flow; a run that does not finish in ``timeout_s`` is reported, not
    waited for (the flow runner thread is abandoned and dies with this process)."""
    flow = {"sequential": "sequential", "map": "fanout"}[mode]
    client = estate.client()
    outcome: list[Any] = []
    runner = threading.Thread(
        target=lambda: outcome.append(
            run_flow(client, f"{flow_file}:{flow}", {"n": str(steps)}, trigger="api")
        ),
        daemon=True,
    )
    start = time.perf_counter()
    runner.start()
    runner.join(timeout_s)
    wall_s = time.perf_counter() - start
    slots = estate.capacity * estate.agents
    with estate.client() as reader:
        if not outcome:
            # The abandoned runner would log its watch reconnects once the estate is gone.
            logging.getLogger("meridian").setLevel(logging.CRITICAL)
            # The run exists but the flow body never finished: say what the store knows.
            (summary,) = reader.list_runs(limit=1, flow_name=flow)
            detail = reader.get_run(summary.flow_run_id)
            result = analyse(detail, wall_s, steps, slots)
            result["error"] = (
                f"the flow runner did not finish within {timeout_s:g}s; the run is "
                f"{detail.state} with {result['steps_completed']}/{steps} steps completed"
            )
            result["mode"] = mode
            return result
        if outcome[0].state != "COMPLETED":
            raise RuntimeError(f"{mode} run {outcome[0].flow_run_id} ended {outcome[0].state}")
        detail = reader.get_run(outcome[0].flow_run_id)
    client.close()
    result = analyse(detail, wall_s, steps, slots)
    result["mode"] = mode
    return result


# ---- reporting -----------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for package in ("grpcio", "sqlalchemy", "protobuf"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[package] = version(package)
    return {
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
    }


def print_result(result: Mapping[str, Any]) -> None:
    print(f"\n== {result['mode']}: {result['steps']} steps, run {result['run_id']}")
    if result.get("error"):
        print(f"  ERROR: {result['error']}")
    print(
        f"  throughput: {result['steps_per_s_wall']} steps/s wall clock "
        f"({result['wall_s']}s incl. bundle upload and run set-up), "
        f"{result['steps_per_s_server']} steps/s first submit -> last completion, "
        f"attempts started {result['dispatched_per_s']}/s"
    )
    print(f"  {'latency (ms)':<24}{'p50':>9}{'p95':>9}{'p99':>9}{'mean':>9}{'max':>9}")
    for name, stats in result["latency_ms"].items():
        if stats.get("count"):
            cells = "".join(f"{stats[k]:>9}" for k in ("p50", "p95", "p99", "mean", "max"))
            print(f"  {name:<24}{cells}")


def print_memory(memory: Mapping[str, Mapping[str, int]]) -> None:
    print("\n== resident memory at the end (MiB: VmRSS / peak VmHWM)")
    for name, values in memory.items():
        rss, hwm = values.get("VmRSS", 0) / 1024, values.get("VmHWM", 0) / 1024
        print(f"  {name:<24}{rss:8.1f} / {hwm:.1f}")


NOTE = """\
note: the process provider starts a fresh Python interpreter for every step ('running_to_
spawned', 'spawned_to_succeeded' and the start-up cost above), which bounds throughput on this
machine. 'submit_to_start' ends when the control plane accepts the agent's RUNNING proposal,
before the process is spawned: it is the orchestration latency alone. In 'map' mode it also
includes waiting for a free slot when there are more steps than slots (agents x capacity)."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="steps per mode")
    parser.add_argument("--mode", choices=("sequential", "map", "both"), default="both")
    parser.add_argument("--db", metavar="URL", help="database URL (default: SQLite)")
    parser.add_argument("--capacity", type=int, default=DEFAULT_CAPACITY, help="slots per agent")
    parser.add_argument(
        "--agents", type=int, choices=(1, 2, 3), default=3, help="agents (default 3)"
    )
    parser.add_argument("--out", metavar="FILE", help="JSON result file")
    parser.add_argument(
        "--run-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="give up on a run that has not finished after this long (default 300)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the estate's directory")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.capacity < 1:
        parser.error("--steps and --capacity must be >= 1")
    return args


def default_out(db_url: str | None) -> Path:
    kind = "postgresql" if db_url and db_url.startswith("postgres") else "sqlite"
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return RESULTS / f"dispatch-{kind}-{stamp}.json"


@contextlib.contextmanager
def estate_dir(keep: bool) -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="meridian-bench-"))
    try:
        yield root
    finally:
        if keep:
            print(f"estate kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so the estate's processes are stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    modes = ("sequential", "map") if args.mode == "both" else (args.mode,)
    info = machine()
    print(
        f"machine: {info['nproc']} CPUs ({info['cpu_model']}), Python {info['python']}, "
        f"load average {info['load_average_at_start'][0]}; "
        f"database: {'SQLite' if not args.db else args.db}"
    )
    with estate_dir(args.keep) as root:
        flow_dir = root / "flows"
        flow_dir.mkdir()
        flow_file = flow_dir / "bench_flows.py"
        flow_file.write_text(FLOW_SOURCE)
        estate = Estate(root, args.db, args.capacity, args.agents)
        try:
            estate.start()
            names = ", ".join(ENVIRONMENTS[: args.agents])
            print(f"control plane {estate.address}, agents {names} "
                  f"x capacity {args.capacity}")  # fmt: skip
            results = []
            for mode in modes:
                result = run_mode(estate, flow_file, mode, args.steps, args.run_timeout)
                print_result(result)
                results.append(result)
            memory = estate.memory()
            memory["flow-runner (this process)"] = proc_memory(os.getpid())
        except BaseException:
            print(estate.logs(), file=sys.stderr)
            raise
        finally:
            estate.stop()
    print_memory(memory)
    startup = interpreter_startup_ms()
    print("\n== step process start-up on this machine (ms)")
    for name, stats in startup.items():
        print(f"  {name:<24}p50 {stats['p50']}  p95 {stats['p95']}")
    print("\n" + NOTE)
    document = {
        "benchmark": "dispatch",
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": info,
        "config": {
            "steps": args.steps,
            "modes": list(modes),
            "database": "postgresql" if args.db else "sqlite",
            "agents": args.agents,
            "capacity_per_agent": args.capacity,
            "provider": "process",
        },
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "results": results,
        "memory_kib": memory,
        "step_process_startup_ms": startup,
    }
    out = Path(args.out) if args.out else default_out(args.db)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nresults written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
