"""Results at their site: transfer throughput between two agents, and what a reference costs.

    python bench/transfer.py                      # 3 transfers of 256 MiB, 30 + 30 small steps
    python bench/transfer.py --mib 1024 --rounds 1
    python bench/transfer.py --mib 0 --steps 100  # only the reference-versus-inline part

One control plane and two agents (process provider) on this machine: ``aws`` keeps results in
a filesystem result store, ``onprem`` has no store and fetches through the control plane.

* **Transfer throughput.** A step on ``aws`` returns ``--mib`` MiB of bytes; a step on
  ``onprem`` takes it, so the bytes cross by an agent-to-agent transfer relayed by the control
  plane (TLS on loopback both ways). The rate is the ledger's bytes over the transfer's
  duration (``meridian transfers`` row: first request to the receiver's digest check). While
  it runs, the resident memory of the control plane and of both agent processes (not their
  step processes, which hold the value by design) is sampled every 5 ms; reported is the peak
  above each one's idle size (target: >= 100 MB/s, <= 64 MiB extra anywhere).
* **Reference versus inline.** ``--steps`` sequential steps returning ``--kib`` KiB of JSON
  inline (under the inline threshold), then as many returning the same value kept in the
  store (``@step(result_store="scratch")``): each step's round trip (its step run's creation
  to its end, as stored), p50/p95, and the difference per step.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import common

FLOW_SOURCE = '''\
"""Flows of bench/transfer.py."""

from meridian import flow, step

BLOCK = bytes(range(256)) * 4096  # 1 MiB


@step(target="environment=aws")
def produce(mib: int) -> bytes:
    return BLOCK * mib


@step(target="environment=onprem")
def consume(data: bytes) -> int:
    return len(data)


@flow
def cross(mib: int) -> int:
    return consume(produce(mib))


@step(target="environment=aws")
def inline_value(kib: int) -> str:
    return "x" * (kib * 1024)


@step(target="environment=aws", result_store="scratch")
def stored_value(kib: int) -> str:
    return "x" * (kib * 1024)


@flow
def inline_steps(n: int, kib: int) -> int:
    for _ in range(n):
        inline_value(kib)
    return n


@flow
def stored_steps(n: int, kib: int) -> int:
    for _ in range(n):
        stored_value(kib)
    return n
'''


def _rss_kib(pid: int) -> int:
    return common.proc_memory_kib(pid).get("VmRSS", 0)


class PeakRss:
    """The highest RSS of some processes, sampled every 5 ms in a thread."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self.peak = dict.fromkeys(self.pids, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, pid in self.pids.items():
                self.peak[name] = max(self.peak[name], _rss_kib(pid))
            self._stop.wait(0.005)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def idle_rss(pids: Mapping[str, int]) -> dict[str, int]:
    samples: dict[str, list[int]] = {name: [] for name in pids}
    for _ in range(20):
        for name, pid in pids.items():
            samples[name].append(_rss_kib(pid))
        time.sleep(0.05)
    return {name: sorted(values)[len(values) // 2] for name, values in samples.items()}


def transfer_round(
    estate: common.Estate, flow_file: Path, mib: int, timeout_s: float
) -> dict[str, Any]:
    pids = {name: estate.pid(name) for name in ("control-plane", "agent-aws", "agent-onprem")}
    idle = idle_rss(pids)
    with PeakRss(pids) as meter:
        result = common.run_flow_timed(estate, flow_file, "cross", {"mib": str(mib)}, timeout_s)
    row: dict[str, Any] = {"run_id": result.run_id, "state": result.state, "error": result.error}
    with estate.client() as client:
        transfers = [
            t
            for t in client.list_transfers(flow_run_id=result.run_id).transfers
            if t.state == "COMPLETED" and t.to_environment == "onprem"
        ]
    if transfers and transfers[0].started_at and transfers[0].ended_at:
        t = transfers[0]
        seconds = max((t.ended_at - t.started_at).total_seconds(), 1e-6)
        row.update(
            bytes=t.bytes, seconds=round(seconds, 3), mb_per_s=round(t.bytes / seconds / 1e6, 1)
        )
    row["extra_rss_mib"] = {name: round((meter.peak[name] - idle[name]) / 1024, 1) for name in pids}
    row["idle_rss_mib"] = {name: round(kib / 1024, 1) for name, kib in idle.items()}
    return row


def step_round_trips_ms(detail: Any) -> list[float]:
    return [
        (step.ended_at - step.created_at).total_seconds() * 1000
        for step in detail.steps
        if step.state == "COMPLETED" and step.ended_at and step.created_at
    ]


def reference_cost(
    estate: common.Estate, flow_file: Path, steps: int, kib: int, timeout_s: float
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    params = {"n": str(steps), "kib": str(kib)}
    for flow in ("inline_steps", "stored_steps"):
        result = common.run_flow_timed(estate, flow_file, flow, params, timeout_s)
        out[flow] = {
            "state": result.state,
            "error": result.error,
            "round_trip_ms": common.percentiles(step_round_trips_ms(result.detail)),
        }
    inline = out["inline_steps"]["round_trip_ms"].get("p50")
    stored = out["stored_steps"]["round_trip_ms"].get("p50")
    if inline is not None and stored is not None:
        out["reference_extra_ms_p50"] = round(stored - inline, 2)
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=256, help="MiB per transfer (0: none)")
    parser.add_argument("--rounds", type=int, default=3, help="transfers (default 3)")
    parser.add_argument("--steps", type=int, default=30, help="steps per reference/inline run")
    parser.add_argument("--kib", type=int, default=200, help="KiB per small result (< 256)")
    parser.add_argument("--run-timeout", type=float, default=1800.0, metavar="SECONDS")
    common.common_args(parser)
    args = parser.parse_args(argv)
    if args.mib < 0 or args.rounds < 1 or args.steps < 0 or not 1 <= args.kib < 256:
        parser.error("--mib >= 0, --rounds >= 1, --steps >= 0, 1 <= --kib < 256")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    common.install_sigterm()
    common.print_banner("transfer")
    config = {"mib": args.mib, "rounds": args.rounds, "steps": args.steps, "kib": args.kib,
              "agents": 2, "provider": "process", "store": "filesystem"}  # fmt: skip
    report = common.Report("transfer", config)
    failed = False
    with common.estate(args.keep) as estate:
        store_config = estate.root / "aws.toml"
        store_config.write_text(
            f'[result_stores.scratch]\ntype = "filesystem"\nroot = "{estate.root / "store"}"\n'
            "default = true\n"
        )
        estate.add_agent("aws", environment="aws", config=store_config)
        estate.add_agent("onprem", environment="onprem")
        flow_file = common.write_flow(estate.root, FLOW_SOURCE)
        rounds = []
        if args.mib:
            for _ in range(args.rounds):
                rounds.append(transfer_round(estate, flow_file, args.mib, args.run_timeout))
        report.results["transfers"] = rounds
        if args.steps:
            report.results["reference_cost"] = reference_cost(
                estate, flow_file, args.steps, args.kib, args.run_timeout
            )
    rows = [
        [f"{args.mib} MiB #{n + 1}", r.get("mb_per_s"), r.get("seconds"),
         *(r["extra_rss_mib"][k] for k in ("control-plane", "agent-aws", "agent-onprem"))]
        for n, r in enumerate(rounds)
    ]  # fmt: skip
    if rows:
        print()
        common.print_table(
            ["transfer", "MB/s", "s", "CP +MiB", "aws agent +MiB", "onprem agent +MiB"], rows
        )
    cost = report.results.get("reference_cost")
    if cost:
        print()
        common.print_table(
            ["small results", "p50 ms", "p95 ms"],
            [
                [
                    name,
                    cost[name]["round_trip_ms"].get("p50"),
                    cost[name]["round_trip_ms"].get("p95"),
                ]
                for name in ("inline_steps", "stored_steps")
            ],
        )
    for item in [*rounds, *(cost.values() if cost else [])]:
        if isinstance(item, dict) and item.get("error"):
            print(f"ERROR: {item['error']}", file=sys.stderr)
            failed = True
    report.write(args.out)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
