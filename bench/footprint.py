"""Footprint: RSS and CPU of the control plane, an agent and a flow runner, idle and loaded.

    python bench/footprint.py                       # idle 10 s, then a fan-out of 200
    python bench/footprint.py --idle-seconds 30 --n 1000

Every process is started through the ``meridian`` CLI, the flow runner too (``meridian run``),
so each has its own pid. CPU is the delta of utime+stime in ``/proc/<pid>/stat`` over the
phase, as % of one core; RSS is VmRSS (and peak VmHWM) from ``/proc/<pid>/status``.

Phases:

* ``idle``: control plane and one connected agent, nothing to do;
* ``runner_waiting``: a flow runner waiting on one long step (runner idle, agent holding one
  running step process);
* ``loaded``: a flow runner fanning out ``--n`` trivial steps, sampled every 0.25 s until the
  run ends (the runner's numbers are its last sample before it exits);
* ``warm_workers``: after the fan-out, the agent's child processes (the process provider's warm
  step workers, one per slot by default: ``--capacity 8`` gives 8): how many, and the RSS of
  each — what a warm worker costs on top of the agent's own RSS.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import common

FLOW_SOURCE = '''\
"""Flows of bench/footprint.py."""

import time

from meridian import flow, step, wait


@step(target="bench=yes")
def noop(i: int) -> int:
    return i


@step(target="bench=yes")
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@flow
def fanout(n: int) -> int:
    return len(wait(noop.map(range(n))))


@flow
def waiting(seconds: float) -> float:
    return nap(seconds)
'''


class Sampler:
    """Polls CPU seconds and RSS of some pids until stopped; keeps the last good sample."""

    def __init__(self, pids: dict[str, int], every_s: float = 0.25) -> None:
        self.pids = pids
        self.every_s = every_s
        self.first: dict[str, tuple[float, float]] = {}  # name -> (monotonic, cpu s)
        self.last: dict[str, tuple[float, float]] = {}
        self.rss_kib: dict[str, int] = {}
        self.peak_kib: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        now = time.monotonic()
        for name, pid in self.pids.items():
            try:
                cpu = common.proc_cpu_s(pid)
            except (OSError, ValueError, IndexError):
                continue
            memory = common.proc_memory_kib(pid)
            self.first.setdefault(name, (now, cpu))
            self.last[name] = (now, cpu)
            if "VmRSS" in memory:
                self.rss_kib[name] = memory["VmRSS"]
                self.peak_kib[name] = max(self.peak_kib.get(name, 0), memory.get("VmHWM", 0))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.every_s)

    def __enter__(self) -> Sampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def result(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for name in self.pids:
            if name not in self.last:
                continue
            (t0, c0), (t1, c1) = self.first[name], self.last[name]
            out[name] = {
                "cpu_s": round(c1 - c0, 2),
                "cpu_percent": round((c1 - c0) / (t1 - t0) * 100, 1) if t1 > t0 else 0.0,
                "rss_mib": round(self.rss_kib.get(name, 0) / 1024, 1),
                "peak_rss_mib": round(self.peak_kib.get(name, 0) / 1024, 1),
            }
        return out


def start_runner(estate: common.Estate, flow_file: Path, flow: str, param: str) -> Any:
    log = open(estate.root / f"runner-{flow}.log", "wb")  # noqa: SIM115 - child keeps it
    try:
        return subprocess.Popen(
            common.meridian_cmd(
                "run", f"{flow_file}:{flow}", "-p", param, "--control-plane", estate.address,
                "--ca-file", str(estate.ca_file), "--token", estate.token,
            ),
            stdout=log, stderr=subprocess.STDOUT, env=common.quiet_env(), start_new_session=True,
        )  # fmt: skip
    finally:
        log.close()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle-seconds", type=float, default=10.0, help="idle sample length")
    parser.add_argument("--n", type=int, default=200, help="steps of the loaded fan-out")
    parser.add_argument("--capacity", type=int, default=4, help="slots of the one agent")
    parser.add_argument("--run-timeout", type=float, default=1800.0, metavar="SECONDS")
    common.common_args(parser)
    args = parser.parse_args(argv)
    if args.idle_seconds <= 0 or args.n < 1 or args.capacity < 1:
        parser.error("--idle-seconds must be > 0, --n and --capacity >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    common.install_sigterm()
    common.print_banner("footprint")
    config = {"idle_seconds": args.idle_seconds, "n": args.n, "capacity": args.capacity,
              "provider": "process", "database": "sqlite"}  # fmt: skip
    report = common.Report("footprint", config)
    error = ""
    runners: list[subprocess.Popen[bytes]] = []
    with common.estate(args.keep) as estate:
        try:
            estate.add_agent("bench-0", labels={"bench": "yes"}, capacity=args.capacity)
            flow_file = common.write_flow(estate.root, FLOW_SOURCE)
            pids = {
                "control-plane": estate.pid("control-plane"),
                "agent": estate.pid("agent-bench-0"),
            }
            time.sleep(2.0)  # past the connect
            idle = common.sample_usage(pids, args.idle_seconds)
            report.results["idle"] = {**idle, "load_average": common.load_average()}

            nap_s = args.idle_seconds + 4.0
            runner = start_runner(estate, flow_file, "waiting", f"seconds={nap_s}")
            runners.append(runner)
            estate.wait_until(lambda: running_steps(estate) > 0, "the long step to run")
            time.sleep(1.0)
            waiting = common.sample_usage({**pids, "flow-runner": runner.pid}, args.idle_seconds)
            report.results["runner_waiting"] = {**waiting, "load_average": common.load_average()}
            runner.wait(timeout=args.run_timeout)

            runner = start_runner(estate, flow_file, "fanout", f"n={args.n}")
            runners.append(runner)
            started = time.monotonic()
            with Sampler({**pids, "flow-runner": runner.pid}) as sampler:
                try:
                    code = runner.wait(timeout=args.run_timeout)
                except subprocess.TimeoutExpired:
                    code = -1
            loaded: dict[str, Any] = dict(sampler.result())
            loaded["wall_s"] = round(time.monotonic() - started, 2)
            loaded["load_average"] = common.load_average()
            report.results["loaded"] = loaded
            if code != 0:
                error = f"the loaded flow run did not complete (meridian run exited {code})"
            time.sleep(1.0)  # let the last step's worker go back to idle
            report.results["warm_workers"] = warm_workers(pids["agent"])
        finally:
            for runner in runners:
                common.stop_process(runner)
    rows = []
    for phase in ("idle", "runner_waiting", "loaded"):
        for name, usage in report.results.get(phase, {}).items():
            if isinstance(usage, dict):
                load1 = report.results[phase]["load_average"][0]
                rows.append([phase, name, usage["cpu_percent"], usage["rss_mib"],
                             usage["peak_rss_mib"], load1])  # fmt: skip
    print()
    common.print_table(["phase", "process", "CPU %", "RSS MiB", "peak MiB", "load1"], rows)
    workers = report.results.get("warm_workers")
    if workers:
        print(
            f"\nwarm workers of the agent: {workers['count']}, RSS each (MiB): "
            f"{workers['rss_mib_each']} (mean {workers['mean_rss_mib']})"
        )
    report.write(args.out)
    if error:
        print(f"ERROR: {error}", file=sys.stderr)
    return 1 if error else 0


def warm_workers(agent_pid: int) -> dict[str, Any]:
    """The agent's child processes once the fan-out is over: its idle warm step workers."""
    rss = []
    for pid in common.child_pids(agent_pid):
        memory = common.proc_memory_kib(pid)
        if "VmRSS" in memory:
            rss.append(round(memory["VmRSS"] / 1024, 1))
    return {
        "count": len(rss),
        "rss_mib_each": rss,
        "mean_rss_mib": round(sum(rss) / len(rss), 1) if rss else 0.0,
    }


def running_steps(estate: common.Estate) -> int:
    with estate.client(timeout_s=10) as client:
        runs = client.list_runs(limit=1, flow_name="waiting")
        if not runs:
            return 0
        detail = client.get_run(runs[0].flow_run_id)
    with contextlib.suppress(AttributeError):
        return sum(1 for step in detail.steps if step.state == "RUNNING")
    return 0


if __name__ == "__main__":
    sys.exit(main())
