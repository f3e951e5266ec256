"""What every bench script shares: an estate of processes, tokens, measuring and reporting.

An *estate* is one control plane and its agents, started as separate processes through the
``meridian`` CLI exactly as an operator would (``server start``, ``api-tokens create``,
``tokens create``, ``agent enroll``, ``agent start``), in a temporary directory, bound to
127.0.0.1 only. ``Estate`` stops every process it started (agents first) on exit, failure,
Ctrl-C and SIGTERM (``install_sigterm`` turns SIGTERM into ``SystemExit``).

Results: ``document()`` gathers the machine (CPU count and model, Python, git commit, load
average before and after) around a script's own numbers; ``write_results`` writes them as JSON
to ``bench/results/<name>-<UTC stamp>.json`` unless ``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

# Make `python bench/x.py` work from a clean clone without installing anything beyond the repo.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


# ---- processes -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def meridian_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "meridian", *args]


def quiet_env() -> dict[str, str]:
    """This environment without connection settings that would point the CLI elsewhere."""
    env = dict(os.environ)
    for name in (
        "MERIDIAN_CONTROL_PLANE",
        "MERIDIAN_CA_FILE",
        "MERIDIAN_TOKEN",
        "MERIDIAN_PROFILE",
    ):
        env.pop(name, None)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def install_sigterm() -> None:
    """SIGTERM (e.g. from ``timeout``) unwinds like Ctrl-C, so ``finally`` blocks clean up."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


@dataclass
class Estate:
    """One control plane and its agents, as child processes of this script."""

    root: Path
    db_url: str | None = None
    address: str = field(default_factory=lambda: f"127.0.0.1:{free_port()}")
    agent_address: str = field(default_factory=lambda: f"127.0.0.1:{free_port()}")
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    token: str = ""
    server_args: Sequence[str] = ()

    @property
    def server_dir(self) -> Path:
        return self.root / "server"

    @property
    def ca_file(self) -> Path:
        return self.server_dir / "tls" / "ca.crt"

    def client(self, timeout_s: float = 60.0) -> Any:
        """A ``ControlClient`` holding the estate's operator API token."""
        from meridian.client import ControlClient

        return ControlClient(self.address, self.ca_file, timeout_s=timeout_s, token=self.token)

    def spawn(self, name: str, args: Sequence[str]) -> subprocess.Popen[bytes]:
        log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115 - the child keeps it open
        try:
            proc = subprocess.Popen(
                meridian_cmd(*args),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=quiet_env(),
                start_new_session=True,  # a Ctrl-C in the terminal reaches us, not them
            )
        finally:
            log.close()
        self.processes[name] = proc
        return proc

    def cli(self, *args: str) -> str:
        result = subprocess.run(
            meridian_cmd(*args), capture_output=True, text=True, env=quiet_env(), timeout=120
        )
        if result.returncode != 0:
            raise RuntimeError(f"meridian {' '.join(args)} failed:\n{result.stderr}")
        return result.stdout

    def _db_args(self) -> list[str]:
        return ["--db", self.db_url] if self.db_url else []

    def start(self) -> None:
        """Start the control plane and create the operator API token this script acts with."""
        self.root.mkdir(parents=True, exist_ok=True)
        args = ["server", "start", "--data-dir", str(self.server_dir), "--listen", self.address]
        args += ["--agent-listen", self.agent_address, *self._db_args(), *self.server_args]
        self.spawn("control-plane", args)
        self.wait_until(self.ca_file.exists, "the control plane's CA")
        token_out = self.cli(
            "api-tokens", "create", "--data-dir", str(self.server_dir), "--role", "operator",
            "--name", "bench", *self._db_args(),
        )  # fmt: skip
        self.token = token_out.strip().splitlines()[-1].strip()
        self.wait_until(lambda: self.agents() is not None, "the control plane to serve")

    def join_token(self, environment: str) -> str:
        out = self.cli(
            "tokens", "create", "--data-dir", str(self.server_dir),
            "--environment", environment, *self._db_args(),
        )  # fmt: skip
        return out.strip().splitlines()[-1].strip()

    def add_agent(
        self,
        name: str,
        *,
        environment: str | None = None,
        labels: Mapping[str, str] | None = None,
        capacity: int = 4,
        wait: bool = True,
        config: Path | None = None,
        runner_slots: int = 0,
        extra_args: Sequence[str] = (),
    ) -> subprocess.Popen[bytes]:
        """Enroll and start one real agent (process provider) through the CLI; ``config`` is an
        agent config file (e.g. with ``[result_stores.NAME]``); ``runner_slots`` hosted flow
        runners it offers (``--runner-slots``)."""
        environment = environment or name
        data_dir = self.root / "agents" / name
        self.cli(
            "agent", "enroll", "--control-plane", self.address, "--ca-file", str(self.ca_file),
            "--token", self.join_token(environment), "--data-dir", str(data_dir), "--name", name,
        )  # fmt: skip
        args = ["agent", "start", "--control-plane", self.address, "--environment", environment]
        args += ["--data-dir", str(data_dir), "--provider", "process"]
        args += ["--capacity", str(capacity), "--drain-grace", "5"]
        for key, value in (labels or {}).items():
            args += ["--label", f"{key}={value}"]
        if config is not None:
            args += ["--config", str(config)]
        if runner_slots:
            args += ["--runner-slots", str(runner_slots)]
        args += list(extra_args)  # further `agent start` options
        proc = self.spawn(f"agent-{name}", args)
        if wait:
            self.wait_until(lambda: self.connected(name), f"agent {name} to connect")
        return proc

    def agents(self) -> list[Any] | None:
        with self.client(timeout_s=10) as client:
            return list(client.list_agents())

    def connected(self, *names: str) -> bool:
        agents = {a.name: a.status for a in self.agents() or []}
        return all(agents.get(name) == "connected" for name in names)

    def connected_count(self) -> int:
        return sum(1 for a in self.agents() or [] if a.status == "connected")

    def wait_until(
        self, check: Callable[[], bool], what: str, timeout_s: float = STARTUP_TIMEOUT_S
    ) -> None:
        from meridian.core.errors import MeridianError

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for name, proc in self.processes.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited while waiting for {what}\n{self.logs()}")
            with contextlib.suppress(MeridianError, OSError):
                if check():
                    return
            time.sleep(0.1)
        raise RuntimeError(f"timed out waiting for {what}\n{self.logs()}")

    def logs(self, tail: int = 3000) -> str:
        return "\n".join(
            f"--- {p.name} ---\n{p.read_text(errors='replace')[-tail:]}"
            for p in sorted(self.root.glob("*.log"))
        )

    def pid(self, name: str) -> int:
        return self.processes[name].pid

    def stop(self) -> None:
        """Stop agents first (so they are not recorded as lost), then the control plane."""
        for name in sorted(self.processes, key=lambda n: n == "control-plane"):
            stop_process(self.processes[name])


def stop_process(proc: subprocess.Popen[Any], timeout_s: float = STOP_TIMEOUT_S) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@contextlib.contextmanager
def estate(
    keep: bool = False, db_url: str | None = None, server_args: Sequence[str] = ()
) -> Iterator[Estate]:
    """A started control plane in a temporary directory; everything is stopped on the way out
    (and the logs printed to stderr when the body fails)."""
    root = Path(tempfile.mkdtemp(prefix="meridian-bench-"))
    the_estate = Estate(root, db_url, server_args=server_args)
    try:
        the_estate.start()
        yield the_estate
    except BaseException:
        print(the_estate.logs(), file=sys.stderr)
        raise
    finally:
        the_estate.stop()
        if keep:
            print(f"estate kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


# ---- running flows -------------------------------------------------------------------------


def write_flow(root: Path, source: str, name: str = "bench_flows.py") -> Path:
    flow_dir = root / "flows"
    flow_dir.mkdir(exist_ok=True)
    path = flow_dir / name
    path.write_text(source)
    return path


@dataclass
class FlowResult:
    run_id: str
    state: str
    wall_s: float
    detail: Any  # models.RunDetail
    error: str = ""


def run_flow_timed(
    the_estate: Estate, flow_file: Path, flow: str, params: Mapping[str, str], timeout_s: float
) -> FlowResult:
    """Run ``flow`` in a thread of this process (this process is the flow runner); a run that
    does not finish in ``timeout_s`` is reported as it stands, not waited for."""
    import logging

    from meridian.sdk.runner import run_flow

    client = the_estate.client()
    outcome: list[Any] = []
    failure: list[BaseException] = []

    def body() -> None:
        try:
            outcome.append(run_flow(client, f"{flow_file}:{flow}", dict(params), trigger="api"))
        except BaseException as exc:  # reported below
            failure.append(exc)

    runner = threading.Thread(target=body, daemon=True, name=f"flow-runner-{flow}")
    start = time.perf_counter()
    runner.start()
    runner.join(timeout_s)
    wall_s = time.perf_counter() - start
    if failure:
        raise RuntimeError(f"flow {flow} could not run: {failure[0]!r}") from failure[0]
    with the_estate.client() as reader:
        if not outcome:
            logging.getLogger("meridian").setLevel(logging.CRITICAL)
            (summary,) = reader.list_runs(limit=1, flow_name=flow)
            detail = reader.get_run(summary.flow_run_id)
            return FlowResult(
                detail.flow_run_id, detail.state, wall_s, detail,
                error=f"the flow runner did not finish within {timeout_s:g}s",
            )  # fmt: skip
        detail = reader.get_run(outcome[0].flow_run_id)
    client.close()
    error = "" if outcome[0].state == "COMPLETED" else f"run ended {outcome[0].state}"
    return FlowResult(outcome[0].flow_run_id, outcome[0].state, wall_s, detail, error)


def first_times(events: Sequence[Any]) -> dict[str, dict[str, dt.datetime]]:
    """For each step key, the time of the first event of each kind."""
    times: dict[str, dict[str, dt.datetime]] = {}
    for event in events:
        if event.step_key and event.at is not None:
            times.setdefault(event.step_key, {}).setdefault(event.kind, event.at)
    return times


def completed_steps(detail: Any) -> int:
    """Steps the store records as COMPLETED: the durable count."""
    return sum(1 for step in detail.steps if step.state == "COMPLETED")


def ms_between(a: dt.datetime, b: dt.datetime) -> float:
    return (b - a).total_seconds() * 1000


# ---- measuring -----------------------------------------------------------------------------


def percentiles(values: Sequence[float]) -> dict[str, float | int]:
    """p50/p95/p99 (nearest rank), mean, min, max and count."""
    if not values:
        return {"count": 0}
    ordered = sorted(values)

    def rank(p: float) -> float:
        index = max(0, min(len(ordered) - 1, int(-(-p * len(ordered) // 100)) - 1))
        return round(ordered[index], 2)

    return {
        "count": len(ordered),
        "p50": rank(50),
        "p95": rank(95),
        "p99": rank(99),
        "mean": round(statistics.fmean(ordered), 2),
        "min": round(ordered[0], 2),
        "max": round(ordered[-1], 2),
    }


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def proc_memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of ``pid`` in KiB, from /proc/<pid>/status."""
    values: dict[str, int] = {}
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (every thread's), from /proc/<pid>/task/*/children."""
    found: list[int] = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            found.extend(int(word) for word in children.read_text().split())
    return sorted(set(found))


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (its threads included), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as stat:
        text = stat.read()
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def sample_usage(pids: Mapping[str, int], seconds: float) -> dict[str, dict[str, float]]:
    """CPU% of one core and RSS (MiB) of each pid over ``seconds``."""
    before = {name: proc_cpu_s(pid) for name, pid in pids.items()}
    start = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - start
    out: dict[str, dict[str, float]] = {}
    for name, pid in pids.items():
        memory = proc_memory_kib(pid)
        out[name] = {
            "cpu_percent": round((proc_cpu_s(pid) - before[name]) / elapsed * 100, 1),
            "rss_mib": round(memory.get("VmRSS", 0) / 1024, 1),
            "peak_rss_mib": round(memory.get("VmHWM", 0) / 1024, 1),
        }
    return out


class UsageMeter:
    """CPU seconds of some pids between ``start()`` and ``stop()``, with the peak RSS seen."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self._before: dict[str, float] = {}
        self._started = 0.0

    def start(self) -> None:
        self._before = {name: proc_cpu_s(pid) for name, pid in self.pids.items()}
        self._started = time.monotonic()

    def stop(self) -> dict[str, dict[str, float]]:
        elapsed = max(time.monotonic() - self._started, 1e-9)
        out: dict[str, dict[str, float]] = {}
        for name, pid in self.pids.items():
            memory = proc_memory_kib(pid)
            cpu_s = proc_cpu_s(pid) - self._before[name]
            out[name] = {
                "cpu_s": round(cpu_s, 2),
                "cpu_percent": round(cpu_s / elapsed * 100, 1),
                "rss_mib": round(memory.get("VmRSS", 0) / 1024, 1),
                "peak_rss_mib": round(memory.get("VmHWM", 0) / 1024, 1),
            }
        return out


# ---- reporting -----------------------------------------------------------------------------


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    commit = out.stdout.strip()
    if commit:
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    return ""


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": git_commit(),
    }


@dataclass
class Report:
    """A result document: the machine, load before/after, config and the script's numbers."""

    benchmark: str
    config: dict[str, Any]
    load_before: list[float] = field(default_factory=load_average)
    results: dict[str, Any] = field(default_factory=dict)

    def document(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "load_average_before": self.load_before,
            "load_average_after": load_average(),
            "config": self.config,
            "results": self.results,
        }

    def write(self, out: str | None) -> Path:
        document = self.document()
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        path = Path(out) if out else RESULTS / f"{self.benchmark}-{stamp}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document, indent=2, default=str) + "\n")
        before, after = document["load_average_before"], document["load_average_after"]
        print(
            f"\nload average before {before}, after {after} on {document['machine']['nproc']} "
            f"CPUs; results written to {path}"
        )
        return path


def print_banner(name: str) -> None:
    info = machine()
    print(
        f"{name}: {info['nproc']} CPUs ({info['cpu_model']}), Python {info['python']}, "
        f"commit {info['git_commit'][:12]}, load average {load_average()}"
    )


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(h) for h in headers], *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print("  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                               enumerate(zip(row, widths, strict=True))))  # fmt: skip
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return str(value)


def common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", metavar="FILE", help="JSON result file (default bench/results/)")
    parser.add_argument("--keep", action="store_true", help="keep the estate's directory")
