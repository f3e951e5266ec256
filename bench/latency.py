"""Latency: submit -> the user's code starts, over sequential steps.

    python bench/latency.py                 # 50 sequential steps, one agent
    python bench/latency.py --n 200 --capacity 1

The step records ``time.time()`` when its body starts and returns it; the submit time is the
control plane's ``step.pending`` event of that step (recorded in the SubmitSteps transaction,
millisecond resolution). Both clocks are this machine's. Reported per step, p50/p95/p99:

* ``submit_to_user_code``: ``step.pending`` -> the body's first line (the issue-10 measure);
* ``submit_to_running``: ``step.pending`` -> ``attempt.running`` (orchestration alone);
* ``running_to_user_code``: the provider starting the step's process, imports, the call.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import common

FLOW_SOURCE = '''\
"""Flow of bench/latency.py: each step returns the time its body started."""

import time

from meridian import flow, step


@step(target="bench=yes")
def stamp(i: int) -> float:
    return time.time()


@flow
def stamps(n: int) -> int:
    for i in range(n):
        stamp(i)
    return n
'''


def analyse(result: common.FlowResult) -> dict[str, Any]:
    times = common.first_times(result.detail.events)
    user: list[float] = []
    running: list[float] = []
    spawn: list[float] = []
    for step in result.detail.steps:
        kinds = times.get(step.key, {})
        if step.state != "COMPLETED" or "step.pending" not in kinds or not step.result_json:
            continue
        started_ms = float(json.loads(step.result_json)) * 1000
        pending_ms = kinds["step.pending"].timestamp() * 1000
        user.append(started_ms - pending_ms)
        if "attempt.running" in kinds:
            running.append(common.ms_between(kinds["step.pending"], kinds["attempt.running"]))
            spawn.append(started_ms - kinds["attempt.running"].timestamp() * 1000)
    return {
        "run_id": result.run_id,
        "state": result.state,
        "error": result.error,
        "steps_completed_in_store": common.completed_steps(result.detail),
        "wall_s": round(result.wall_s, 3),
        "submit_to_user_code_ms": common.percentiles(user),
        "submit_to_running_ms": common.percentiles(running),
        "running_to_user_code_ms": common.percentiles(spawn),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=50, help="sequential steps (default 50)")
    parser.add_argument("--capacity", type=int, default=4, help="slots of the one agent")
    parser.add_argument("--db", metavar="URL", help="database URL (default: SQLite)")
    parser.add_argument("--run-timeout", type=float, default=1800.0, metavar="SECONDS")
    common.common_args(parser)
    args = parser.parse_args(argv)
    if args.n < 1 or args.capacity < 1:
        parser.error("--n and --capacity must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    common.install_sigterm()
    common.print_banner("latency")
    config = {"n": args.n, "agents": 1, "capacity": args.capacity, "provider": "process",
              "database": "postgresql" if args.db else "sqlite"}  # fmt: skip
    report = common.Report("latency", config)
    with common.estate(args.keep, args.db) as estate:
        estate.add_agent("bench-0", labels={"bench": "yes"}, capacity=args.capacity)
        flow_file = common.write_flow(estate.root, FLOW_SOURCE)
        result = common.run_flow_timed(
            estate, flow_file, "stamps", {"n": str(args.n)}, args.run_timeout
        )
        report.results = analyse(result)
        report.results["load_average_after"] = common.load_average()
    rows = []
    for name in ("submit_to_user_code_ms", "submit_to_running_ms", "running_to_user_code_ms"):
        stats = report.results[name]
        rows.append([name, stats.get("count"), stats.get("p50"), stats.get("p95"),
                     stats.get("p99"), stats.get("max")])  # fmt: skip
    print()
    common.print_table(["latency (ms)", "steps", "p50", "p95", "p99", "max"], rows)
    report.write(args.out)
    if result.error:
        print(f"ERROR: {result.error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
