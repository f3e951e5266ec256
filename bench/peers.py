"""Side by side with Prefect 3, in one interleaved session on this machine.

    python bench/peers.py                       # 3 rounds of: fan-out 200, chain 50
    python bench/peers.py --rounds 2 --n 1000 --m 200
    python bench/peers.py --skip-prefect        # Meridian only (what the smoke test runs)

Prefect is installed by this script into ``bench/.venv-prefect`` (``python -m venv`` and
``pip install 'prefect==3.*'``; gitignored); when that fails the Prefect side is skipped with a
message and Meridian's side still runs. The runs alternate — Meridian, Prefect, Meridian,
Prefect, ... — so both see the same machine load, and the load average is recorded with each.

The same two workloads on both:

* fan-out: N trivial tasks (``step.map(range(N))`` / ``task.map(range(N))``), results persisted
  (Meridian always stores them; Prefect with ``persist_result=True``, local result storage, a
  SQLite-backed ephemeral API server in a temporary ``PREFECT_HOME``);
* chain: M trivial tasks called one after the other.

Durable tasks/s counts what each system's store records as COMPLETED (Meridian: the run's
steps; Prefect: the flow run's task runs in state COMPLETED, read back from its API), over the
flow call's wall clock on both sides, and Prefect's also until its API shows every task
COMPLETED (it records task states asynchronously, after the flow call returns; polled every
0.5 s, so that rate is a lower bound). Prefect runs tasks in threads of the flow's own process;
Meridian runs each step in a fresh process on an agent: the comparison is of what a user gets,
not of like parts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import common

VENV = common.REPO / "bench" / ".venv-prefect"
PREFECT_SPEC = "prefect==3.*"

MERIDIAN_FLOWS = '''\
"""Flows of bench/peers.py (Meridian side)."""

from meridian import flow, step, wait


@step(target="bench=yes")
def noop(i: int) -> int:
    return i


@flow
def fanout(n: int) -> int:
    return len(wait(noop.map(range(n))))


@flow
def chain(m: int) -> int:
    total = 0
    for i in range(m):
        total += noop(i)
    return total
'''

PREFECT_SCRIPT = '''\
"""Prefect side of bench/peers.py: one fan-out and one chain, timed, printed as JSON."""

import asyncio
import json
import sys
import time

from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter, FlowRunFilterId, TaskRunFilter, TaskRunFilterState, TaskRunFilterStateType,
)
from prefect.client.schemas.objects import StateType


@task(persist_result=True)
def noop(i: int) -> int:
    return i


@flow(persist_result=True)
def fanout(n: int) -> int:
    return len(noop.map(range(n)).result())


@flow(persist_result=True)
def chain(m: int) -> int:
    total = 0
    for i in range(m):
        total += noop(i)
    return total


async def completed(flow_run_id):
    flows = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    done = TaskRunFilter(
        state=TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType.COMPLETED]))
    )
    total, page = 0, 200
    async with get_client() as client:
        while True:
            runs = await client.read_task_runs(
                flow_run_filter=flows, task_run_filter=done, limit=page, offset=total
            )
            total += len(runs)
            if len(runs) < page:
                return total


def timed(fn, size):
    start = time.perf_counter()
    state = fn(size, return_state=True)
    wall = time.perf_counter() - start
    run_id = state.state_details.flow_run_id
    # Task run states reach Prefect's API asynchronously (events): wait, bounded, for them.
    recorded_at = time.perf_counter()
    count = asyncio.run(completed(run_id))
    while count < size and time.perf_counter() - recorded_at < 30:
        time.sleep(0.5)
        count = asyncio.run(completed(run_id))
    return {"wall_s": round(wall, 3), "state": state.type.value, "tasks_completed_in_store": count,
            "recorded_after_s": round(time.perf_counter() - recorded_at, 3)}


n, m = int(sys.argv[1]), int(sys.argv[2])
chain(1)  # warm-up: the ephemeral API server starts on first use
out = {}
if n:
    out["fanout"] = timed(fanout, n)
if m:
    out["chain"] = timed(chain, m)
print("RESULT " + json.dumps(out), flush=True)
'''


def prefect_python(skip: bool) -> tuple[Path | None, str]:
    """The Prefect venv's interpreter, installing it if needed; (None, why) when unavailable."""
    if skip:
        return None, "skipped (--skip-prefect)"
    python = VENV / "bin" / "python"
    check = [str(python), "-c", "import prefect; print(prefect.__version__)"]
    if python.exists():
        found = subprocess.run(check, capture_output=True, text=True, timeout=120)
        if found.returncode == 0:
            return python, found.stdout.strip()
    print(f"installing {PREFECT_SPEC} into {VENV} (once) ...", flush=True)
    steps = [
        [sys.executable, "-m", "venv", str(VENV)],
        [str(python), "-m", "pip", "install", "-q", PREFECT_SPEC],
    ]
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"could not install Prefect ({' '.join(step[-3:])}: {exc})"
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            return None, f"could not install Prefect: {' / '.join(tail)}"
    found = subprocess.run(check, capture_output=True, text=True, timeout=120)
    if found.returncode != 0:
        return None, f"Prefect installed but does not import: {found.stderr.strip()[-300:]}"
    return python, found.stdout.strip()


def run_prefect(python: Path, n: int, m: int, timeout_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-prefect-") as home:
        script = Path(home) / "prefect_side.py"
        script.write_text(PREFECT_SCRIPT)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(
            PREFECT_HOME=home,
            PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home}/prefect.db",
            PREFECT_LOCAL_STORAGE_PATH=f"{home}/storage",
            PREFECT_SERVER_ALLOW_EPHEMERAL_MODE="true",
            PREFECT_SERVER_API_HOST="127.0.0.1",
            PREFECT_LOGGING_LEVEL="WARNING",
            # No telemetry writes racing the first migrations, and patience on a busy host.
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            DO_NOT_TRACK="1",
            PREFECT_API_DATABASE_TIMEOUT="60",
            PREFECT_SERVER_DATABASE_TIMEOUT="60",
            PREFECT_API_REQUEST_TIMEOUT="120",
            PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
        )
        env.pop("VIRTUAL_ENV", None)
        try:
            done = subprocess.run(
                [str(python), str(script), str(n), str(m)],
                capture_output=True, text=True, env=env, cwd=home, timeout=timeout_s,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return {"error": f"Prefect did not finish within {timeout_s:g}s"}
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT ") :])
            for workload, size in (("fanout", n), ("chain", m)):
                if workload in result:
                    add_rates(result[workload], size, result[workload]["tasks_completed_in_store"])
            return result
    return {"error": f"Prefect run failed (exit {done.returncode}): {done.stderr[-800:]}"}


def add_rates(entry: dict[str, Any], size: int, completed: int) -> None:
    wall = entry["wall_s"]
    entry["size"] = size
    entry["durable_per_s"] = round(completed / wall, 2) if wall > 0 else None
    # Prefect records task states asynchronously: the rate until its API shows them COMPLETED.
    # Meridian's steps are COMPLETED in the store before the flow call returns.
    until = wall + float(entry.get("recorded_after_s") or 0.0)
    entry["durable_per_s_until_recorded"] = round(completed / until, 2) if until > 0 else None
    entry["ms_per_task_wall"] = round(wall / size * 1000, 2) if size else None


def run_meridian(
    estate: common.Estate, flow_file: Path, n: int, m: int, timeout_s: float
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for workload, param, size in (("fanout", "n", n), ("chain", "m", m)):
        if not size:
            continue
        result = common.run_flow_timed(estate, flow_file, workload, {param: str(size)}, timeout_s)
        completed = common.completed_steps(result.detail)
        entry: dict[str, Any] = {"wall_s": round(result.wall_s, 3), "state": result.state,
                                 "tasks_completed_in_store": completed}  # fmt: skip
        if result.error:
            entry["error"] = result.error
        add_rates(entry, size, completed)
        out[workload] = entry
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--n", type=int, default=200, help="fan-out size (0: skip)")
    parser.add_argument("--m", type=int, default=50, help="chain length (0: skip)")
    parser.add_argument("--capacity", type=int, default=4, help="slots of Meridian's one agent")
    parser.add_argument("--skip-prefect", action="store_true", help="run Meridian's side only")
    parser.add_argument("--run-timeout", type=float, default=1800.0, metavar="SECONDS")
    common.common_args(parser)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.n < 0 or args.m < 0 or args.capacity < 1:
        parser.error("--rounds/--capacity must be >= 1, --n/--m >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    common.install_sigterm()
    common.print_banner("peers")
    python, prefect_version = prefect_python(args.skip_prefect)
    if python is None:
        print(f"Prefect: {prefect_version}; running Meridian's side only", flush=True)
    config = {"rounds": args.rounds, "n": args.n, "m": args.m, "meridian_agents": 1,
              "meridian_capacity": args.capacity, "meridian_provider": "process",
              "prefect": prefect_version if python else None,
              "prefect_skipped": None if python else prefect_version}  # fmt: skip
    report = common.Report("peers", config)
    runs: list[dict[str, Any]] = []
    report.results["runs"] = runs
    failed = False
    with common.estate(args.keep) as estate:
        estate.add_agent("bench-0", labels={"bench": "yes"}, capacity=args.capacity)
        flow_file = common.write_flow(estate.root, MERIDIAN_FLOWS)
        for round_no in range(1, args.rounds + 1):
            sides: list[str] = ["meridian"] + (["prefect"] if python else [])
            for side in sides:
                load = common.load_average()
                print(f"round {round_no}: {side} (load {load[0]}) ...", flush=True)
                started = time.monotonic()
                if side == "meridian":
                    result = run_meridian(estate, flow_file, args.n, args.m, args.run_timeout)
                else:
                    assert python is not None
                    result = run_prefect(python, args.n, args.m, args.run_timeout)
                entry = {"round": round_no, "system": side, "load_average_before": load,
                         "load_average_after": common.load_average(),
                         "elapsed_s": round(time.monotonic() - started, 1), **result}  # fmt: skip
                runs.append(entry)
                failed = (
                    failed
                    or bool(result.get("error"))
                    or any(isinstance(v, dict) and v.get("error") for v in result.values())
                )
    rows = []
    for entry in runs:
        for workload in ("fanout", "chain"):
            w = entry.get(workload)
            if isinstance(w, dict):
                rows.append([f"{entry['round']} {entry['system']}", workload, w["size"],
                             w["tasks_completed_in_store"], w["durable_per_s"],
                             w["durable_per_s_until_recorded"], w["ms_per_task_wall"],
                             entry["load_average_before"][0]])  # fmt: skip
        if entry.get("error"):
            rows.append([f"{entry['round']} {entry['system']}", "ERROR", entry["error"][:60],
                         None, None, None, None, entry["load_average_before"][0]])  # fmt: skip
    print()
    common.print_table(["round system", "workload", "tasks", "COMPLETED", "per s (call)",
                        "per s (recorded)", "ms/task", "load1"], rows)  # fmt: skip
    if python is None:
        print(f"  Prefect: {prefect_version}")
    report.write(args.out)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
