"""The batch job of one attempt: sbatch arguments, job files, and ``scontrol`` parsing.

Kept apart from ``provider.py`` so that module holds only the verbs. Everything here
is plain values and files: no subprocesses.

Files of one attempt, all in its *job dir* (the attempt's work dir, or
``<shared_dir>/<attempt_id>`` when ``shared_dir`` is set) on a filesystem that the agent and
the compute nodes share: ``job.sh`` (the batch script), ``spec.json`` (read by
``meridian.stepexec``), ``stdout.log``/``stderr.log`` (sbatch ``--output``/``--error``),
``started`` (epoch seconds, written when the job starts running), ``exit_code`` (the step's
exit status, written by the script), ``outcome.json`` (written by stepexec), ``ended_by`` and
``cancel_grace`` (written by the provider before it cancels).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shlex
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from providers.base import ExecutionSpec
from providers.shared.outcome import SPEC_FILE
from providers.slurm.config import SlurmConfig

SCRIPT_FILE = "job.sh"
STDOUT_LOG = "stdout.log"
STDERR_LOG = "stderr.log"
STARTED_FILE = "started"
EXIT_CODE_FILE = "exit_code"
ENDED_BY_FILE = "ended_by"  # "cancelled" | "timed_out": written before we scancel
CANCEL_GRACE_FILE = "cancel_grace"  # read by the script's TERM trap
TIME_SLACK_S = 60.0  # Slurm's --time is a backstop: our own timeout must fire first

# Job states in which the job's processes may still run (or have yet to start).
ACTIVE_STATES = frozenset(
    {
        "PENDING",
        "CONFIGURING",
        "RUNNING",
        "COMPLETING",
        "SUSPENDED",
        "STOPPED",
        "SIGNALING",
        "STAGE_OUT",
        "RESIZING",
        "REQUEUED",
        "REQUEUE_FED",
        "REQUEUE_HOLD",
        "RESV_DEL_HOLD",
    }
)
# The node or the scheduler failed the job, not the step: reported as "infrastructure".
INFRA_STATES = frozenset({"NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE", "REVOKED"})


def job_dir_of(config: SlurmConfig, spec: ExecutionSpec) -> Path:
    if config.shared_dir is not None:
        return (config.shared_dir / spec.attempt_id).resolve()
    return spec.work_dir.resolve()


def time_limit(config: SlurmConfig, spec: ExecutionSpec) -> str | None:
    """``--time``: the option, else the step timeout plus slack (minutes), else the default."""
    option = spec.options.get("time_limit")
    if option is not None:
        return str(option)
    if spec.timeout_s and spec.timeout_s > 0:
        return str(max(1, math.ceil((spec.timeout_s + config.kill_grace_s + TIME_SLACK_S) / 60)))
    return config.default_time_limit


def sbatch_argv(config: SlurmConfig, spec: ExecutionSpec, job_dir: Path) -> list[str]:
    """The full sbatch command line for one attempt (the script is ``job_dir/job.sh``)."""
    options = spec.options
    argv = [
        config.binary("sbatch"),
        "--parsable",
        # The control plane owns retries: Slurm must not silently re-run an attempt.
        "--no-requeue",
        f"--job-name={spec.step_key}",
        f"--comment=meridian:run={spec.flow_run_id},step={spec.step_run_id},"
        f"attempt={spec.attempt_id}",
        f"--chdir={job_dir}",
        f"--output={job_dir / STDOUT_LOG}",
        f"--error={job_dir / STDERR_LOG}",
    ]
    flags = {
        "--partition": options.get("partition") or config.partition,
        "--account": options.get("account") or config.account,
        "--qos": options.get("qos"),
        "--cpus-per-task": options.get("cpus"),
        "--mem": options.get("memory"),
        "--gpus": options.get("gpus"),
        "--time": time_limit(config, spec),
    }
    argv += [f"{flag}={value}" for flag, value in flags.items() if value is not None]
    argv += list(config.extra_sbatch_args)
    argv.append(str(job_dir / SCRIPT_FILE))
    return argv


def _code_root() -> str | None:
    """The directory holding the ``meridian`` package, so stepexec imports from a bare bundle."""
    found = importlib.util.find_spec("meridian")
    for location in (found.submodule_search_locations or []) if found else []:
        return str(Path(location).parent)
    return None


def step_env(spec: ExecutionSpec) -> dict[str, str]:
    """What the job's environment adds to the submitting environment sbatch exports."""
    env = {**spec.options.get("env", {}), **spec.env}
    path = [str(spec.bundle_dir.resolve())] if spec.bundle_dir else []
    root = _code_root()
    path += [root] if root else []
    if env.get("PYTHONPATH"):
        path.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(path)
    env["MERIDIAN_ATTEMPT_ID"] = spec.attempt_id
    env["MERIDIAN_FLOW_RUN_ID"] = spec.flow_run_id
    env["MERIDIAN_STEP_KEY"] = spec.step_key
    return env


def render_script(config: SlurmConfig, spec: ExecutionSpec, job_dir: Path) -> str:
    """The batch script: run the step in its own session, forward TERM, record its exit code.

    The step runs as a child (not ``exec``) so the script outlives it: it writes the exit
    code for a re-attached agent after Slurm forgot the job (MinJobAge), keeps the step's
    processes in the job's process tree (proctrack/linuxproc loses orphans), and on SIGTERM
    from scancel gives the step ``cancel_grace`` seconds before it kills the step's group.
    """
    command = spec.options.get("command")
    if command is not None:
        argv = [str(arg) for arg in command]
        cwd = spec.bundle_dir.resolve() if spec.bundle_dir else job_dir
    else:
        argv = [config.python, "-m", "meridian.stepexec", "--work-dir", str(job_dir)]
        cwd = job_dir
    q = shlex.quote
    exports = "\n".join(f"export {k}={q(v)}" for k, v in sorted(step_env(spec).items()))
    return f"""#!/bin/bash
# Meridian step {spec.step_key!r}, attempt {spec.attempt_id}: written by the slurm provider.
set -u
job_dir={q(str(job_dir))}
publish() {{ printf '%s\\n' "$2" > "$job_dir/.$1" && mv -f "$job_dir/.$1" "$job_dir/$1"; }}
publish {STARTED_FILE} "$(date +%s.%N)"
{exports}
cd {q(str(cwd))} || exit 2
grace={config.kill_grace_s:g}
child=
timer=
on_term() {{
  [ -n "$child" ] || exit 143
  [ -z "$timer" ] || return 0  # Slurm may signal twice; the first grace period counts
  if [ -r "$job_dir/{CANCEL_GRACE_FILE}" ]; then grace=$(cat "$job_dir/{CANCEL_GRACE_FILE}"); fi
  kill -TERM -- "-$child" 2>/dev/null || kill -TERM "$child" 2>/dev/null
  setsid sh -c 'sleep "$1"; kill -KILL -- "-$2" 2>/dev/null || kill -KILL "$2"' \\
    timer "$grace" "$child" &
  timer=$!
}}
trap on_term TERM
setsid --wait {" ".join(q(a) for a in argv)} &
child=$!
while :; do
  wait "$child"; rc=$?
  kill -0 "$child" 2>/dev/null || break  # still alive: a trapped signal interrupted wait
done
[ -z "$timer" ] || kill -- "-$timer" 2>/dev/null
publish {EXIT_CODE_FILE} "$rc"
exit "$rc"
"""


def _write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def write_job_files(config: SlurmConfig, spec: ExecutionSpec, job_dir: Path) -> None:
    """Write ``spec.json`` (same keys as the process provider) and ``job.sh`` into job_dir."""
    job_dir.mkdir(parents=True, exist_ok=True)
    bundle = str(spec.bundle_dir.resolve()) if spec.bundle_dir else None
    step = {
        "module": spec.module,
        "function": spec.function,
        "inputs_json": spec.inputs_json,
        "bundle_dir": bundle,
        "step_key": spec.step_key,
        **spec.context_fields(),
        **spec.result_fields(),
    }
    _write_atomic(job_dir / SPEC_FILE, json.dumps(step))
    # Owner-only: the script holds the step's environment, which may carry secrets.
    _write_atomic(job_dir / SCRIPT_FILE, render_script(config, spec, job_dir), stat.S_IRWXU)


@dataclass(frozen=True)
class JobInfo:
    """The parts of ``scontrol show job -o`` the provider reads."""

    state: str
    reason: str
    exit_code: int | None  # negative: killed by that signal

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


def parse_job(text: str) -> JobInfo | None:
    """Parse one ``scontrol show job -o`` line; None when it names no job."""
    fields: dict[str, str] = {}
    for token in text.split():
        key, sep, value = token.partition("=")
        if sep and key not in fields:  # the first JobState wins over any later look-alike
            fields[key] = value
    if "JobState" not in fields:
        return None
    return JobInfo(
        state=fields["JobState"].upper(),
        reason=fields.get("Reason", ""),
        exit_code=parse_exit_code(fields.get("ExitCode", "")),
    )


def parse_exit_code(text: str) -> int | None:
    """Slurm's ``ExitCode=N:S``: the exit status, or minus the signal that ended the job."""
    status, _, signal = text.partition(":")
    try:
        code, sig = int(status), int(signal or 0)
    except ValueError:
        return None
    return -sig if sig else code


def sequence_repr(argv: Sequence[str]) -> str:
    return " ".join(shlex.quote(arg) for arg in argv)
