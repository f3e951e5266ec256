"""A private single-node Slurm cluster for integration tests (Debian ``slurm-wlm`` + ``munge``).

``slurm_cluster`` (session-scoped) writes a munge key and a ``slurm.conf`` into a temporary
directory, starts ``munged`` (own socket), ``slurmctld`` and ``slurmd`` (``-D``, as background
processes of this test run) on free non-default ports, waits until ``sinfo`` reports the node
idle, and stops every daemon by its PID afterwards. Nothing touches ``/etc/slurm``, the system
munge socket or a system Slurm. The configuration follows docs/providers/slurm.md (Slurm 22.05 as
root: ``proctrack/linuxproc``, ``task/none``, no accounting, and ``DefMemPerCPU`` so that jobs
do not claim the whole node's memory).

Skips (never fails) when the binaries are missing or the tests do not run as root.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

INSTALL_HINT = "install slurm-wlm and munge (.ci/slurm-setup.sh)"
DEFAULT_PARTITION = "debug"
OTHER_PARTITION = "batch"  # a second, non-default partition: proves the option is passed
START_TIMEOUT_S = 30.0
_DAEMONS = ("munged", "slurmctld", "slurmd")


@dataclass(frozen=True)
class SlurmCluster:
    """What a running test cluster offers to providers and tests."""

    root: Path
    conf: Path
    bin_dir: Path
    node: str
    cpus: int
    partitions: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)

    def provider_config(self, **extra: Any) -> dict[str, Any]:
        """A ``SlurmProvider`` config that talks to this cluster."""
        config: dict[str, Any] = {
            "bin_dir": str(self.bin_dir),
            "slurm_conf": str(self.conf),
            "poll_interval_s": 0.2,
            "kill_grace_s": 1.0,
        }
        config.update(extra)
        return config

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client command (``squeue``, ``scontrol``, ...) against this cluster."""
        return subprocess.run(
            [str(self.bin_dir / argv[0]), *argv[1:]],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=15,
            check=check,
        )

    def job_fields(self, job_id: str) -> dict[str, str]:
        """``scontrol show job -o`` as a dict (empty when slurmctld no longer knows the job)."""
        out = self.run("scontrol", "show", "job", "-o", job_id, check=False)
        fields: dict[str, str] = {}
        for token in out.stdout.split():
            key, sep, value = token.partition("=")
            if sep:
                fields.setdefault(key, value)
        return fields


def _find(name: str) -> Path | None:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")
    return Path(found) if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _mem_total_mb() -> int:
    with open("/proc/meminfo", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 2048


def _write_conf(root: Path, node: str, cpus: int, munge_socket: Path) -> Path:
    ctld_port, slurmd_port = _free_port(), _free_port()
    while slurmd_port == ctld_port:
        slurmd_port = _free_port()
    memory = max(512, min(_mem_total_mb() // 2, 4096))
    lines = [
        "ClusterName=meridiantest",
        f"SlurmctldHost={node}(127.0.0.1)",
        f"SlurmctldPort={ctld_port}",
        f"SlurmdPort={slurmd_port}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={munge_socket}",
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'slurmctld.log'}",
        f"SlurmdLogFile={root / 'slurmd.log'}",
        f"PlugStackConfig={root / 'plugstack.conf'}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "DefMemPerCPU=100",
        "AccountingStorageType=accounting_storage/none",
        "JobAcctGatherType=jobacct_gather/none",
        "JobCompType=jobcomp/filetxt",
        f"JobCompLoc={root / 'jobcomp.log'}",
        "SchedulerType=sched/builtin",  # schedules on every submit: no backfill interval
        # Start batch jobs as soon as they are submitted (default: up to 3 s of batching).
        "SchedulerParameters=batch_sched_delay=0,sched_min_interval=0",
        "MpiDefault=none",
        "ReturnToService=2",
        "KillWait=2",  # seconds between SIGTERM and SIGKILL when a job is cancelled
        "InactiveLimit=0",
        "MinJobAge=300",  # finished jobs stay visible to scontrol this long
        f"NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} State=UNKNOWN",
        f"PartitionName={DEFAULT_PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP",
        f"PartitionName={OTHER_PARTITION} Nodes={node} Default=NO MaxTime=60 State=UP",
    ]
    (root / "plugstack.conf").write_text("", encoding="ascii")
    conf = root / "slurm.conf"
    conf.write_text("\n".join(lines) + "\n", encoding="ascii")
    return conf


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM one daemon we started, SIGKILL it if it lingers."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_idle(cluster: SlurmCluster, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    state = ""
    while time.monotonic() < deadline:
        for name, proc in zip(_DAEMONS, procs, strict=False):
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {proc.returncode}; log:\n"
                    f"{_log_tail(cluster.root / f'{name}.log')}"
                )
        out = cluster.run("sinfo", "-h", "-N", "-o", "%t", check=False)
        state = out.stdout.strip() or out.stderr.strip()
        if out.returncode == 0 and state and all(s == "idle" for s in state.split()):
            return
        time.sleep(0.3)
    raise RuntimeError(
        f"the test Slurm node did not become idle within {START_TIMEOUT_S:g} s "
        f"(sinfo: {state!r}); slurmctld log:\n{_log_tail(cluster.root / 'slurmctld.log')}\n"
        f"slurmd log:\n{_log_tail(cluster.root / 'slurmd.log')}"
    )


@contextlib.contextmanager
def running_cluster(root: Path) -> Iterator[SlurmCluster]:
    """Start munged, slurmctld and slurmd under ``root``; stop them (by PID) on exit."""
    paths = {name: _find(name) for name in (*_DAEMONS, "sbatch", "sinfo")}
    missing = [name for name, path in paths.items() if path is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not found: {INSTALL_HINT}")
    if os.geteuid() != 0:
        pytest.skip("the test Slurm cluster runs its daemons as root (SlurmUser=root)")
    root.mkdir(parents=True, exist_ok=True)
    # munged wants its socket directory reachable by everyone and writable by nobody else.
    root.chmod(0o755)
    for sub in ("state", "spool", "munge"):
        (root / sub).mkdir(mode=0o755, exist_ok=True)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    munge_socket = root / "munge" / "munge.socket"
    node = socket.gethostname().split(".")[0]
    cpus = os.cpu_count() or 1
    conf = _write_conf(root, node, cpus, munge_socket)
    sbatch = paths["sbatch"]
    assert sbatch is not None
    cluster = SlurmCluster(
        root=root,
        conf=conf,
        bin_dir=sbatch.parent,
        node=node,
        cpus=cpus,
        partitions=(DEFAULT_PARTITION, OTHER_PARTITION),
        env={"SLURM_CONF": str(conf)},
    )
    env = {**os.environ, **cluster.env}
    commands = {
        "munged": [
            str(paths["munged"]),
            "--foreground",
            "--force",  # pytest's base temp dir is 0700: let munged run with a warning
            f"--socket={munge_socket}",
            f"--key-file={key}",
            f"--pid-file={root / 'munge' / 'munged.pid'}",
            f"--log-file={root / 'munged.log'}",
            f"--seed-file={root / 'munge' / 'munged.seed'}",
        ],
        "slurmctld": [str(paths["slurmctld"]), "-D", "-i", "-f", str(conf)],
        "slurmd": [str(paths["slurmd"]), "-D", "-f", str(conf)],
    }
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name in _DAEMONS:
            with open(root / f"{name}.out", "wb") as out:
                procs.append(
                    subprocess.Popen(
                        commands[name], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=root
                    )
                )
            if name == "munged":
                _wait_for_path(munge_socket, procs[-1], root / "munged.log")
        _wait_idle(cluster, procs)
        yield cluster
    finally:
        _cancel_all(cluster)
        # Reverse order: slurmd (and its job steps) first, munged (authenticates them) last.
        for proc in reversed(procs):
            _stop(proc)


def _wait_for_path(path: Path, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 10
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"munged did not start; log:\n{_log_tail(log)}")
        time.sleep(0.05)


def _cancel_all(cluster: SlurmCluster) -> None:
    """Cancel whatever jobs the tests left behind, so no slurmstepd outlives the cluster."""
    with contextlib.suppress(Exception):
        jobs = cluster.run("squeue", "-h", "-o", "%i", check=False).stdout.split()
        if not jobs:
            return
        cluster.run("scancel", *jobs, check=False)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if not cluster.run("squeue", "-h", "-o", "%i", check=False).stdout.split():
                return
            time.sleep(0.2)


@pytest.fixture(scope="session", name="slurm_cluster")
def slurm_cluster_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A running single-node Slurm cluster for the whole session (skips when not installed)."""
    with running_cluster(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster
