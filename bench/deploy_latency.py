"""Deployment latency: trigger -> the flow body starts on a hosted runner, and a burst of runs.

    python bench/deploy_latency.py                  # 2 rounds: 30 sequential, burst of 50
    python bench/deploy_latency.py --agents 2 --runner-slots 8 --n 30 --burst 50 --rounds 2
    python bench/deploy_latency.py --skip-prefect   # Meridian only (what the smoke test runs)

Issue 12's targets, measured on both Meridian and Prefect 3 in one interleaved session
(Meridian, Prefect, Meridian, Prefect, ... ``--rounds``), the load average recorded with each:

* **sequential** (``--n``, default 30): trigger a deployment, wait until its run is final, then
  the next. The flow is empty: its body's first (and only) line returns ``time.time()``, read
  back from the run's stored result. *trigger -> body* is that time minus ``time.time()`` taken
  just before the trigger call (same machine, same clock); *trigger -> COMPLETED* is the run's
  stored end time (Meridian ``ended_at``, Prefect ``end_time``) minus the trigger time; *trigger
  -> picked up* is when a runner took the run (Meridian: the ``run.runner_assigned`` event;
  Prefect: the run's first PENDING state). Target: trigger -> body p50 <= 0.5 s.
* **burst** (``--burst``, default 50): that many triggers sent at once by ``--senders``
  concurrent senders (threads for Meridian, asyncio tasks for Prefect; 1 = a plain loop), then
  the time from just before the first trigger to the last run's stored end, once every run is
  final (polled every 0.25 s; the stored end times make the number independent of the poll).
  Target: <= 10 s.

Every round first triggers one run that is not counted (``first_trigger`` in the JSON: the
first run of a deployment also fetches its code). A run that ends other than COMPLETED is
reported with its error (table footnote and JSON) and makes the script exit 1.

Meridian: one control plane and ``--agents`` agents (default 2) offering ``--runner-slots``
hosted flow-runner slots each (default 8), process provider, SQLite; the deployment is created
with ``meridian deploy FILE:FLOW --name bench-stamp --runner-target bench=runner`` and
triggered with ``ControlClient.trigger_deployment``. Each hosted run is a new
``python -m meridian.flowexec`` process on an agent.

Prefect 3 (installed by ``bench/peers.py``'s installer into ``bench/.venv-prefect``): a local
``prefect server start`` on 127.0.0.1 (temporary ``PREFECT_HOME``, SQLite), and the same empty
flow served with ``flow.serve(name=..., limit=--prefect-limit)`` (default: Meridian's total
runner slots), its runner polling every second (``PREFECT_RUNNER_POLL_FREQUENCY=1``; the
default is 10 s) — Prefect's fastest realistic deployment path, no work pool or worker in
between. Triggered with ``prefect.deployments.run_deployment(name, timeout=0)``; the flow's
result is persisted (``persist_result=True``, local storage) and read back with
``state.result()``. Prefect's runner starts each flow run in a new subprocess. Both systems
stay up, idle, while the other one is measured. When Prefect cannot be installed or its
server does not start, the script says why and runs Meridian's side only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import common
import peers

DEPLOYMENT = "bench-stamp"
RUNNER_LABEL = "bench=runner"
# The previous version's runner path, side by side: agents that start a fresh interpreter per
# hosted runner (--no-runner-fork-server), with a deployment of their own.
FRESH = "meridian-fresh"
FRESH_DEPLOYMENT = "bench-stamp-fresh"
FRESH_LABEL = "bench=runner-fresh"
FINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "CRASHED"})
BURST_POLL_S = 0.25
TARGET_BODY_P50_MS = 500.0
TARGET_BURST_S = 10.0

MERIDIAN_FLOW = '''\
"""Flow of bench/deploy_latency.py: an empty body that returns the time it started."""

import time

from meridian import flow


@flow
def stamp() -> float:
    return time.time()
'''

PREFECT_SERVE = '''\
"""Prefect side of bench/deploy_latency.py: the empty flow, served (argv: runner limit)."""

import sys
import time

from prefect import flow


@flow(name="bench-stamp", persist_result=True)
def stamp() -> float:
    return time.time()


if __name__ == "__main__":
    stamp.serve(name="bench-stamp", limit=int(sys.argv[1]))
'''

PREFECT_DRIVER = '''\
"""Prefect side of bench/deploy_latency.py: one round (argv: n burst senders poll_s)."""

import asyncio
import json
import sys
import time

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.deployments import run_deployment

NAME = "bench-stamp/bench-stamp"


def ms(seconds):
    return round(seconds * 1000, 2)


async def wait_final(client, run_id, poll_s, timeout_s=600):
    deadline = time.monotonic() + timeout_s
    while True:
        run = await client.read_flow_run(run_id)
        if run.state is not None and run.state.is_final():
            return run
        if time.monotonic() > deadline:
            return run
        await asyncio.sleep(poll_s)


async def describe(client, run, trigger_s, history=False):
    entry = {"run_id": str(run.id), "state": run.state.type.value if run.state else "?"}
    if entry["state"] == "COMPLETED":
        try:
            entry["trigger_to_body_ms"] = ms(float(await run.state.result()) - trigger_s)
        except Exception as exc:
            entry["error"] = f"result unreadable: {exc!r}"
        if run.end_time is not None:
            entry["trigger_to_completed_ms"] = ms(run.end_time.timestamp() - trigger_s)
    elif run.state is not None:
        entry["error"] = str(run.state.message)[:300]
    if history:
        states = await client.read_flow_run_states(run.id)
        pending = [s.timestamp for s in states if s.type.value == "PENDING"]
        if pending:
            entry["trigger_to_picked_up_ms"] = ms(min(pending).timestamp() - trigger_s)
    return entry


async def one(client, poll_s):
    trigger_s = time.time()
    run = await run_deployment(NAME, timeout=0)
    run = await wait_final(client, run.id, poll_s)
    return await describe(client, run, trigger_s, history=True)


async def burst(client, size, senders, timeout_s=900):
    gate = asyncio.Semaphore(senders)

    async def send():
        async with gate:
            return await run_deployment(NAME, timeout=0)

    start_s = time.time()
    sent = await asyncio.gather(*[send() for _ in range(size)])
    sent_s = time.time() - start_s
    ids = [run.id for run in sent]
    final = {}
    deadline = time.monotonic() + timeout_s
    while len(final) < size and time.monotonic() < deadline:
        runs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)), limit=size
        )
        for run in runs:
            if run.state is not None and run.state.is_final():
                final[run.id] = run
        if len(final) < size:
            await asyncio.sleep(__BURST_POLL_S__)
    observed_s = time.time() - start_s
    entries = []
    for run_id in ids:
        run = final.get(run_id) or await client.read_flow_run(run_id)
        entries.append(await describe(client, run, start_s))
    return {"sent_s": round(sent_s, 3), "observed_s": round(observed_s, 3), "runs": entries}


async def main():
    n, size, senders = (int(arg) for arg in sys.argv[1:4])
    poll_s = float(sys.argv[4])
    out = {}
    async with get_client() as client:
        deadline = time.monotonic() + 120
        while True:  # the served deployment registers itself when serve() starts
            try:
                await client.read_deployment_by_name(NAME)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
        out["first_trigger"] = await one(client, poll_s)
        out["sequential"] = [await one(client, poll_s) for _ in range(n)]
        if size:
            out["burst"] = await burst(client, size, senders)
    print("RESULT " + json.dumps(out), flush=True)


asyncio.run(main())
'''.replace("__BURST_POLL_S__", repr(BURST_POLL_S))


# ---- Meridian ------------------------------------------------------------------------------


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def describe_meridian(detail: Any, trigger_s: float) -> dict[str, Any]:
    entry: dict[str, Any] = {"run_id": detail.flow_run_id, "state": detail.state}
    if detail.state == "COMPLETED":
        try:
            entry["trigger_to_body_ms"] = ms(float(json.loads(detail.result_json)) - trigger_s)
        except (TypeError, ValueError) as exc:
            entry["error"] = f"result unreadable: {exc!r} ({detail.result_json[:80]!r})"
        if detail.ended_at is not None:
            entry["trigger_to_completed_ms"] = ms(detail.ended_at.timestamp() - trigger_s)
    assigned = [e.at for e in detail.events if e.kind == "run.runner_assigned" and e.at]
    if assigned:
        entry["trigger_to_picked_up_ms"] = ms(min(assigned).timestamp() - trigger_s)
    if detail.state != "COMPLETED" and detail.error is not None:
        entry["error"] = f"{detail.error}"[:300]
    return entry


def wait_final(client: Any, run_id: str, poll_s: float, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        detail = client.get_run(run_id)
        if detail.state in FINAL_STATES or time.monotonic() > deadline:
            return detail
        time.sleep(poll_s)


def meridian_one(client: Any, deployment: str, poll_s: float, timeout_s: float) -> dict[str, Any]:
    trigger_s = time.time()
    answer = client.trigger_deployment(deployment, {})
    detail = wait_final(client, answer.flow_run_id, poll_s, timeout_s)
    return describe_meridian(detail, trigger_s)


def meridian_burst(
    estate: common.Estate, deployment: str, size: int, senders: int, timeout_s: float
) -> dict[str, Any]:
    local = threading.local()
    clients: list[Any] = []
    lock = threading.Lock()

    def send(_: int) -> str:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = estate.client()
            with lock:
                clients.append(client)
        return str(client.trigger_deployment(deployment, {}).flow_run_id)

    with estate.client() as reader:
        with ThreadPoolExecutor(max_workers=senders, thread_name_prefix="trigger") as pool:
            start_s = time.time()
            ids = list(pool.map(send, range(size)))
            sent_s = time.time() - start_s
        for client in clients:
            client.close()
        final: dict[str, str] = {}
        deadline = time.monotonic() + timeout_s
        wanted = set(ids)
        while len(final) < size and time.monotonic() < deadline:
            # Newest first: this round's runs are the newest of the flow.
            for summary in reader.list_runs(limit=size + 10, flow_name="stamp"):
                if summary.flow_run_id in wanted and summary.state in FINAL_STATES:
                    final[summary.flow_run_id] = summary.state
            if len(final) < size:
                time.sleep(BURST_POLL_S)
        observed_s = time.time() - start_s
        runs = [describe_meridian(reader.get_run(run_id), start_s) for run_id in ids]
    return {"sent_s": round(sent_s, 3), "observed_s": round(observed_s, 3), "runs": runs}


def run_meridian(
    estate: common.Estate, args: argparse.Namespace, deployment: str
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with estate.client() as client:
        out["first_trigger"] = meridian_one(client, deployment, args.poll, args.run_timeout)
        out["sequential"] = [
            meridian_one(client, deployment, args.poll, args.run_timeout) for _ in range(args.n)
        ]
    if args.burst:
        out["burst"] = meridian_burst(
            estate, deployment, args.burst, args.senders, args.run_timeout
        )
    return out


# ---- Prefect -------------------------------------------------------------------------------


def prefect_env(home: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.pop("VIRTUAL_ENV", None)
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home}/prefect.db",
        PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_SERVER_API_PORT=str(port),
        PREFECT_LOCAL_STORAGE_PATH=str(home / "storage"),
        PREFECT_RUNNER_POLL_FREQUENCY="1",
        PREFECT_UI_ENABLED="false",
        PREFECT_LOGGING_LEVEL="WARNING",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        # Patience on a busy host (SQLite write locks), as in bench/peers.py.
        PREFECT_SERVER_DATABASE_TIMEOUT="60",
        PREFECT_API_REQUEST_TIMEOUT="120",
        PYTHONUNBUFFERED="1",
    )
    return env


class PrefectSide:
    """A local Prefect server and a runner serving the empty flow, as child processes."""

    def __init__(self, python: Path, root: Path, limit: int) -> None:
        self.python = python
        self.root = root
        self.limit = limit
        self.port = common.free_port()
        self.env = prefect_env(root / "home", self.port)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self, name: str, args: Sequence[str]) -> None:
        log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115 - the child keeps it open
        try:
            self.processes[name] = subprocess.Popen(
                [str(self.python), *args], stdout=log, stderr=subprocess.STDOUT,
                env=self.env, cwd=self.root, start_new_session=True,
            )  # fmt: skip
        finally:
            log.close()

    def healthy(self) -> bool:
        url = f"http://127.0.0.1:{self.port}/api/health"
        with (
            contextlib.suppress(OSError, ValueError),
            urllib.request.urlopen(url, timeout=5) as answer,
        ):
            return bool(answer.status == 200)
        return False

    def start(self, timeout_s: float = 240.0) -> None:
        (self.root / "home").mkdir(parents=True, exist_ok=True)
        (self.root / "serve.py").write_text(PREFECT_SERVE)
        (self.root / "driver.py").write_text(PREFECT_DRIVER)
        prefect = str(self.python.parent / "prefect")
        server = ["server", "start", "--host", "127.0.0.1", "--port", str(self.port)]
        self.spawn("prefect-server", [prefect, *server])
        deadline = time.monotonic() + timeout_s
        while not self.healthy():
            if self.processes["prefect-server"].poll() is not None:
                raise RuntimeError(f"prefect server start exited\n{self.logs()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Prefect server did not answer in {timeout_s:g}s")
            time.sleep(0.5)
        self.spawn("prefect-serve", [str(self.root / "serve.py"), str(self.limit)])

    def run_round(self, args: argparse.Namespace) -> dict[str, Any]:
        if self.processes["prefect-serve"].poll() is not None:
            return {"error": f"the Prefect runner (serve) exited\n{self.logs()}"}
        command = [str(self.python), str(self.root / "driver.py"), str(args.n),
                   str(args.burst), str(args.senders), str(args.poll)]  # fmt: skip
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, env=self.env, cwd=self.root,
                timeout=args.run_timeout * 2,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return {"error": f"the Prefect round did not finish within {args.run_timeout * 2:g}s"}
        for line in done.stdout.splitlines():
            if line.startswith("RESULT "):
                result: dict[str, Any] = json.loads(line[len("RESULT ") :])
                return result
        return {"error": f"the Prefect round failed (exit {done.returncode}): "
                         f"{done.stderr[-800:]}"}  # fmt: skip

    def logs(self, tail: int = 2000) -> str:
        return "\n".join(
            f"--- {p.name} ---\n{p.read_text(errors='replace')[-tail:]}"
            for p in sorted(self.root.glob("*.log"))
        )

    def stop(self) -> None:
        for name in ("prefect-serve", "prefect-server"):
            proc = self.processes.get(name)
            if proc is None:
                continue
            # Each was started in its own session, with its children (the server's workers,
            # the runner's flow-run processes): end the whole group, patiently, then for sure.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@contextlib.contextmanager
def prefect_side(python: Path | None, limit: int, keep: bool) -> Iterator[PrefectSide | str]:
    """A started Prefect side, or the reason it could not start."""
    if python is None:
        yield "not installed"
        return
    root = Path(tempfile.mkdtemp(prefix="bench-prefect-deploy-"))
    side = PrefectSide(python, root, limit)
    try:
        try:
            print("starting the Prefect server and runner ...", flush=True)
            side.start()
        except RuntimeError as exc:
            print(f"Prefect could not start: {exc}", file=sys.stderr)
            yield f"could not start: {str(exc).splitlines()[0]}"
            return
        yield side
    finally:
        side.stop()
        if keep:
            print(f"Prefect side kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


# ---- analysis and reporting ----------------------------------------------------------------


def summarise(raw: dict[str, Any], burst_size: int) -> dict[str, Any]:
    """Percentiles of one round's raw entries (the raw values are kept next to them)."""
    out: dict[str, Any] = {}
    if "error" in raw:
        out["error"] = raw["error"]
    seq = raw.get("sequential", [])
    if "first_trigger" in raw:
        out["first_trigger"] = raw["first_trigger"]
    if seq or "sequential" in raw:
        entry: dict[str, Any] = {
            "triggers": len(seq),
            "completed": sum(1 for e in seq if e.get("state") == "COMPLETED"),
        }
        for key in ("trigger_to_body_ms", "trigger_to_completed_ms", "trigger_to_picked_up_ms"):
            entry[key] = common.percentiles([e[key] for e in seq if key in e])
        entry["raw"] = seq
        errors = [e for e in seq if e.get("state") != "COMPLETED" or e.get("error")]
        if errors:
            entry["errors"] = errors[:5]
        out["sequential"] = entry
    burst = raw.get("burst")
    if isinstance(burst, dict):
        runs = burst.get("runs", [])
        completed = [e for e in runs if e.get("state") == "COMPLETED"]
        ends = [e["trigger_to_completed_ms"] for e in completed if "trigger_to_completed_ms" in e]
        all_done = len(completed) == burst_size and len(ends) == burst_size
        out["burst"] = {
            "size": burst_size,
            "completed": len(completed),
            "sent_s": burst.get("sent_s"),
            "all_completed_s": round(max(ends) / 1000, 3) if all_done else None,
            "observed_s": burst.get("observed_s"),
            "trigger_to_body_ms": common.percentiles(
                [e["trigger_to_body_ms"] for e in runs if "trigger_to_body_ms" in e]
            ),
            "trigger_to_completed_ms": common.percentiles(ends),
            "raw": runs,
        }
        if not all_done:
            out["burst"]["error"] = f"{len(completed)} of {burst_size} runs COMPLETED"
    return out


def pooled(runs: list[dict[str, Any]], system: str) -> dict[str, Any]:
    """Every round of one system together: sequential percentiles and the bursts' times."""
    mine = [r for r in runs if r["system"] == system]
    seq = [e for r in mine for e in r.get("sequential", {}).get("raw", [])]
    bursts = [r["burst"]["all_completed_s"] for r in mine if "burst" in r]
    return {
        "rounds": len(mine),
        "trigger_to_body_ms": common.percentiles(
            [e["trigger_to_body_ms"] for e in seq if "trigger_to_body_ms" in e]
        ),
        "trigger_to_completed_ms": common.percentiles(
            [e["trigger_to_completed_ms"] for e in seq if "trigger_to_completed_ms" in e]
        ),
        "burst_all_completed_s": bursts,
    }


def failed(entry: dict[str, Any], args: argparse.Namespace) -> bool:
    if entry.get("error"):
        return True
    seq = entry.get("sequential", {})
    if seq.get("completed") != args.n:
        return True
    return bool(args.burst and entry.get("burst", {}).get("error"))


def print_tables(runs: list[dict[str, Any]], config: dict[str, Any]) -> None:
    rows = []
    for entry in runs:
        seq = entry.get("sequential")
        label = f"{entry['round']} {entry['system']}"
        if not seq:
            rows.append([label, "ERROR", str(entry.get("error", ""))[:50], *[None] * 7])
            continue
        body, done = seq["trigger_to_body_ms"], seq["trigger_to_completed_ms"]
        pick = seq["trigger_to_picked_up_ms"]
        rows.append([label, seq["triggers"], seq["completed"], body.get("p50"), body.get("p95"),
                     done.get("p50"), done.get("p95"), pick.get("p50"),
                     entry.get("first_trigger", {}).get("trigger_to_body_ms"),
                     entry["load_average_before"][0]])  # fmt: skip
    print("\nsequential triggers (ms from just before the trigger call)")
    common.print_table(["round system", "triggers", "COMPLETED", "body p50", "body p95",
                        "done p50", "done p95", "picked p50", "first body", "load1"],
                       rows)  # fmt: skip
    rows = []
    for entry in runs:
        burst = entry.get("burst")
        if not burst:
            continue
        body = burst["trigger_to_body_ms"]
        slots = config["meridian_runner_slots"] if entry["system"] != "prefect" else (
            config["prefect_runner_limit"])  # fmt: skip
        rows.append([f"{entry['round']} {entry['system']}", burst["size"], burst["completed"],
                     slots, burst["sent_s"], burst["all_completed_s"], burst["observed_s"],
                     body.get("p50"), body.get("p95"),
                     entry["load_average_before"][0]])  # fmt: skip
    if rows:
        print(f"\nburst ({config['senders']} concurrent senders; s from just before the first "
              "trigger)")  # fmt: skip
        common.print_table(["round system", "runs", "COMPLETED", "slots", "sent s",
                            "all done s", "seen s", "body p50 ms", "body p95 ms", "load1"],
                           rows)  # fmt: skip
    for entry in runs:
        raw = [*entry.get("sequential", {}).get("raw", []), *entry.get("burst", {}).get("raw", [])]
        messages = dict.fromkeys(e["error"] for e in raw if e.get("error"))
        for message in list(messages)[:3]:
            print(f"  {entry['round']} {entry['system']}: {message[:300]}")
    print(f"\n  targets: trigger -> body p50 <= {TARGET_BODY_P50_MS:g} ms; burst all COMPLETED "
          f"<= {TARGET_BURST_S:g} s")  # fmt: skip


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=30, help="sequential triggers (default 30)")
    parser.add_argument("--burst", type=int, default=50, help="runs of the burst (0: skip)")
    parser.add_argument("--senders", type=int, default=8,
                        help="concurrent senders of the burst (default 8; 1: a loop)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    parser.add_argument("--agents", type=int, default=2, help="Meridian agents (default 2)")
    parser.add_argument("--runner-slots", type=int, default=8,
                        help="runner slots of each Meridian agent (default 8)")  # fmt: skip
    parser.add_argument("--prefect-limit", type=int, default=0,
                        help="runs Prefect's served runner starts at once "
                             "(default: agents x runner slots)")  # fmt: skip
    parser.add_argument(
        "--poll",
        type=float,
        default=0.05,
        metavar="SECONDS",
        help="how often a sequential trigger's run is read until final",
    )
    parser.add_argument("--skip-prefect", action="store_true", help="run Meridian's side only")
    parser.add_argument(
        "--skip-fresh",
        action="store_true",
        help="do not also run agents that start a fresh interpreter per hosted runner "
        "(the runner path before the fork server)",
    )
    parser.add_argument("--run-timeout", type=float, default=600.0, metavar="SECONDS")
    common.common_args(parser)
    args = parser.parse_args(argv)
    if min(args.n, args.rounds, args.agents, args.runner_slots, args.senders) < 1:
        parser.error("--n, --rounds, --agents, --runner-slots and --senders must be >= 1")
    if args.burst < 0 or args.prefect_limit < 0 or args.poll <= 0:
        parser.error("--burst and --prefect-limit must be >= 0, --poll > 0")
    args.prefect_limit = args.prefect_limit or args.agents * args.runner_slots
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    common.install_sigterm()
    common.print_banner("deploy_latency")
    python, prefect_version = peers.prefect_python(args.skip_prefect)
    config: dict[str, Any] = {
        "rounds": args.rounds, "n": args.n, "burst": args.burst, "senders": args.senders,
        "poll_s": args.poll, "burst_poll_s": BURST_POLL_S,
        "meridian_agents": args.agents, "meridian_runner_slots_per_agent": args.runner_slots,
        "meridian_runner_slots": args.agents * args.runner_slots,
        "meridian_provider": "process", "meridian_database": "sqlite",
        "meridian_runner_start": "fork server (meridian.flowzygote)",
        "meridian_fresh_side": None if args.skip_fresh else
            "the same agents' settings with --no-runner-fork-server (a fresh interpreter per "
            "runner, as before the fork server), their own deployment",
        "prefect": prefect_version if python else None,
        "prefect_path": "flow.serve(), runner poll 1 s, local server, SQLite",
        "prefect_runner_limit": args.prefect_limit,
        "prefect_skipped": None if python else prefect_version,
        "targets": {"trigger_to_body_p50_ms": TARGET_BODY_P50_MS,
                    "burst_all_completed_s": TARGET_BURST_S},
    }  # fmt: skip
    report = common.Report("deploy_latency", config)
    runs: list[dict[str, Any]] = []
    report.results["runs"] = runs
    any_failed = False
    with (
        common.estate(args.keep) as estate,
        prefect_side(python, args.prefect_limit, args.keep) as prefect,
    ):
        if isinstance(prefect, str):
            if python is not None:
                config["prefect_skipped"] = prefect
            print(f"Prefect: {config['prefect_skipped']}; running Meridian's side only")
        flow_file = common.write_flow(estate.root, MERIDIAN_FLOW)
        deployments = {"meridian": (DEPLOYMENT, RUNNER_LABEL, ())}
        if not args.skip_fresh:
            deployments[FRESH] = (FRESH_DEPLOYMENT, FRESH_LABEL, ("--no-runner-fork-server",))
        for side, (name, label, extra) in deployments.items():
            key, value = label.split("=")
            for i in range(args.agents):
                estate.add_agent(f"{side}-runner-{i}", labels={key: value}, capacity=1,
                                 runner_slots=args.runner_slots, extra_args=extra)  # fmt: skip
            estate.cli(
                "deploy", f"{flow_file}:stamp", "--name", name, "--runner-target", label,
                "--control-plane", estate.address, "--ca-file", str(estate.ca_file),
                "--token", estate.token,
            )  # fmt: skip
        for round_no in range(1, args.rounds + 1):
            sides = [*deployments, *(["prefect"] if isinstance(prefect, PrefectSide) else [])]
            for side in sides:
                load = common.load_average()
                print(f"round {round_no}: {side} (load {load[0]}) ...", flush=True)
                started = time.monotonic()
                if side in deployments:
                    raw = run_meridian(estate, args, deployments[side][0])
                else:
                    assert isinstance(prefect, PrefectSide)
                    raw = prefect.run_round(args)
                entry = {"round": round_no, "system": side, "load_average_before": load,
                         "load_average_after": common.load_average(),
                         "elapsed_s": round(time.monotonic() - started, 1),
                         **summarise(raw, args.burst)}  # fmt: skip
                runs.append(entry)
                any_failed = any_failed or failed(entry, args)
        report.results["pooled"] = {
            system: pooled(runs, system) for system in dict.fromkeys(r["system"] for r in runs)
        }
    print_tables(runs, config)
    if config["prefect_skipped"]:
        print(f"  Prefect: {config['prefect_skipped']}")
    report.write(args.out)
    if any_failed:
        print("ERROR: some runs did not complete (see the JSON report)", file=sys.stderr)
    return 1 if any_failed else 0


if __name__ == "__main__":
    sys.exit(main())
