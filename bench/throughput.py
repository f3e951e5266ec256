"""Throughput: a fan-out of N trivial steps and a sequential chain of M, through real agents.

    python bench/throughput.py                      # N=1,000 fan-out, M=200 chain
    python bench/throughput.py --n 10000 --m 0      # the large fan-out only
    python bench/throughput.py --agents 1 --capacity 4 --out bench/results/mine.json
    python bench/throughput.py --n 0 --m 0 --submit-only 10000   # submit time of a big map

One control plane and ``--agents`` agents (process provider, ``--capacity`` slots each) are
started through the ``meridian`` CLI; this process is the flow runner. Every number is taken
from what the control plane recorded, not from the client:

* durable steps/s: steps whose stored state is COMPLETED (``get_run().steps``), divided by the
  time from the first step's creation (its ``step.pending``) to the last step's end (its
  ``step.completed``), read from the stored step runs;
* per-step round trip: creation -> end of each completed step (in the chain this is the cost
  of one call as the flow body sees it, minus the runner's turnaround);
* submit time of the map: first to last step creation of the fan-out.

``--submit-only K`` measures the submit time of a K-item map without running it: the steps
target a label no agent has, so they stay queued; once all K are stored (polled every 2 s) the
run is cancelled. Its submit time is taken in the flow runner: from sending the first
``SubmitSteps`` request of the map to the last answer (every answer comes after its commit).
A map is stored in one transaction per request, so the ``step.pending`` events of one request
share one timestamp and their span (``submit_span_s``) says little.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

import common

FLOW_SOURCE = '''\
"""Flows of bench/throughput.py."""

from meridian import flow, step, wait


@step(target="bench=yes")
def noop(i: int) -> int:
    return i


@flow
def fanout(n: int) -> int:
    return len(wait(noop.map(range(n))))


@step(target="bench=parked")
def parked(i: int) -> int:
    return i


@flow
def fanout_parked(n: int) -> int:
    return len(wait(parked.map(range(n))))


@flow
def chain(m: int) -> int:
    total = 0
    for i in range(m):
        total += noop(i)
    return total
'''


def analyse(result: common.FlowResult, steps: int, fanned_out: bool) -> dict[str, Any]:
    detail = result.detail
    # The step runs' own times (created = its step.pending event, ended = its step.completed
    # event): a run's event list is capped (10,000 events, ~1,400 steps' worth), its steps not.
    completed = [s for s in detail.steps if s.state == "COMPLETED" and s.created_at and s.ended_at]
    pending = sorted(s.created_at for s in detail.steps if s.created_at)
    done = sorted(s.ended_at for s in completed)
    durable = common.completed_steps(detail)
    span_s = (done[-1] - pending[0]).total_seconds() if pending and done else 0.0
    round_trip = [common.ms_between(s.created_at, s.ended_at) for s in completed]
    return {
        "run_id": result.run_id,
        "state": result.state,
        "error": result.error,
        "steps": steps,
        "steps_completed_in_store": durable,
        "wall_s": round(result.wall_s, 3),
        "durable_steps_per_s": round(durable / span_s, 2) if span_s > 0 else None,
        "steps_per_s_wall": round(durable / result.wall_s, 2) if result.wall_s > 0 else None,
        "first_submit_to_last_completion_s": round(span_s, 3),
        "submit_span_s": round((pending[-1] - pending[0]).total_seconds(), 3)
        if pending and fanned_out
        else None,
        "round_trip_ms": common.percentiles(round_trip),
    }


def submit_only(estate: common.Estate, flow_file: Any, n: int, timeout_s: float) -> dict[str, Any]:
    import threading

    from meridian.sdk.runner import run_flow

    client, spans = timed_client(estate)
    thread = threading.Thread(
        target=lambda: run_flow(client, f"{flow_file}:fanout_parked", {"n": str(n)}),
        daemon=True,
    )
    thread.start()
    deadline = time.monotonic() + timeout_s
    stored, detail = 0, None
    with estate.client() as reader:
        while time.monotonic() < deadline and stored < n:
            time.sleep(2.0)
            runs = reader.list_runs(limit=1, flow_name="fanout_parked")
            if runs:
                detail = reader.get_run(runs[0].flow_run_id)
                stored = len(detail.steps)
        if detail is not None:
            reader.cancel_run(detail.flow_run_id, "bench: submit time measured")
    thread.join(60)
    client.close()
    pending = sorted(
        k["step.pending"]
        for k in common.first_times(detail.events if detail else ()).values()
        if "step.pending" in k
    )
    return {
        "steps": n,
        "steps_stored": stored,
        "submit_s": round(spans[-1][1] - spans[0][0], 3) if spans else None,
        "submit_rpcs": len(spans),
        "submit_span_s": round((pending[-1] - pending[0]).total_seconds(), 3) if pending else None,
        "error": "" if stored == n else f"only {stored}/{n} steps stored within {timeout_s:g}s",
        "load_average_after": common.load_average(),
    }


def timed_client(estate: common.Estate) -> tuple[Any, list[tuple[float, float]]]:
    """A client of the estate that records (start, end) of each ``SubmitSteps`` call; the
    runner's copy (``with_token``) records into the same list."""
    from meridian.client import ControlClient

    spans: list[tuple[float, float]] = []

    class TimedClient(ControlClient):
        def submit_steps(self, flow_run_id: str, submissions: Any) -> Any:
            start = time.perf_counter()
            try:
                return super().submit_steps(flow_run_id, submissions)
            finally:
                spans.append((start, time.perf_counter()))

    client = TimedClient(estate.address, estate.ca_file, timeout_s=60.0, token=estate.token)
    return client, spans


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="fan-out size (0: skip)")
    parser.add_argument("--m", type=int, default=200, help="sequential chain length (0: skip)")
    parser.add_argument("--submit-only", type=int, default=0, metavar="K",
                        help="time the submission of a K-item map that never runs")  # fmt: skip
    parser.add_argument("--agents", type=int, default=1, help="agents (default 1)")
    parser.add_argument("--capacity", type=int, default=4, help="slots per agent (default 4)")
    parser.add_argument("--db", metavar="URL", help="database URL (default: SQLite)")
    parser.add_argument("--run-timeout", type=float, default=3600.0, metavar="SECONDS")
    common.common_args(parser)
    args = parser.parse_args(argv)
    if args.n < 0 or args.m < 0 or args.agents < 1 or args.capacity < 1:
        parser.error("--n/--m must be >= 0, --agents/--capacity >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    common.install_sigterm()
    common.print_banner("throughput")
    config = {"n": args.n, "m": args.m, "agents": args.agents, "capacity": args.capacity,
              "database": "postgresql" if args.db else "sqlite", "provider": "process"}  # fmt: skip
    report = common.Report("throughput", config)
    with common.estate(args.keep, args.db) as estate:
        for i in range(args.agents):
            estate.add_agent(f"bench-{i}", labels={"bench": "yes"}, capacity=args.capacity)
        flow_file = common.write_flow(estate.root, FLOW_SOURCE)
        for name, flow, param, size in (("fanout", "fanout", "n", args.n),
                                        ("chain", "chain", "m", args.m)):  # fmt: skip
            if size:
                print(f"running {name} of {size} steps ...", flush=True)
                flow_result = common.run_flow_timed(
                    estate, flow_file, flow, {param: str(size)}, args.run_timeout
                )
                report.results[name] = analyse(flow_result, size, name == "fanout")
                report.results[name]["load_average_after"] = common.load_average()
        if args.submit_only:
            print(f"submitting a map of {args.submit_only} parked steps ...", flush=True)
            report.results["submit_only"] = submit_only(
                estate, flow_file, args.submit_only, args.run_timeout
            )
    rows = []
    parked = report.results.pop("submit_only", None)
    for name, r in report.results.items():
        rt = r["round_trip_ms"]
        rows.append([name, r["steps"], r["steps_completed_in_store"], r["durable_steps_per_s"],
                     r["steps_per_s_wall"], rt.get("p50"), rt.get("p95"), r["submit_span_s"],
                     r["load_average_after"][0]])  # fmt: skip
    print()
    common.print_table(
        ["workload", "steps", "COMPLETED", "durable/s", "wall/s", "rt p50 ms", "rt p95 ms",
         "submit s", "load1"],
        rows,
    )  # fmt: skip
    if parked:
        report.results["submit_only"] = parked
        print(f"  submit of a {parked['steps']}-item map: {parked['submit_s']} s in "
              f"{parked['submit_rpcs']} SubmitSteps call(s), flow runner side "
              f"({parked['steps_stored']} stored)")  # fmt: skip
    report.write(args.out)
    failed = [r["error"] for r in report.results.values() if r["error"]]
    for error in failed:
        print(f"ERROR: {error}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
