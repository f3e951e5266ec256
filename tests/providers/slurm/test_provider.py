"""The slurm provider, integration-tested against a real single-node Slurm 22.05 on this machine.

``slurm_cluster`` (tests/providers/slurm_cluster.py) starts private munged/slurmctld/slurmd
daemons; every job below is a real ``sbatch`` job whose state, exit code and cancellation come
from Slurm itself (``scontrol``/``scancel``). The agent and the "compute node" are the same
machine, so the shared-filesystem assumption holds trivially here. A few tests at the end check
pure functions (argument rendering, state mapping for states a one-node cluster cannot produce
on demand: NODE_FAIL, PREEMPTED, Slurm's own TIMEOUT, which needs a >= 1 minute time limit).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from providers.base import ExecutionSpec, Handle, Provider, ProviderError, ProviderOptionsError
from providers.slurm import SlurmProvider, job
from providers.slurm.config import SlurmConfig
from providers.slurm.state import Attempt, conclude
from providers.testing import STEP_MODULE, ProviderConformance, write_step_module
from tests.providers.slurm_cluster import SlurmCluster, slurm_cluster_fixture  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

EXTRA_STEPS = """

def record_pid_and_wait(pid_file, ignore_term):
    import signal
    if ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with open(pid_file + ".tmp", "w") as fh:
        fh.write(str(os.getpid()))
    os.replace(pid_file + ".tmp", pid_file)
    time.sleep(120)


def die(code):
    print("about to die", file=sys.stderr, flush=True)
    os._exit(code)


def show_env(*names):
    return {name: os.environ.get(name) for name in names}
"""


class TestSlurmConformance(ProviderConformance):
    """The shared provider suite, every scenario as a real Slurm job."""

    scenario_timeout_s = 40.0
    valid_options = (
        {},
        {"partition": "batch", "cpus": 1, "memory": "256M", "time_limit": 5},
        {"gpus": "a100:2", "qos": "normal", "time_limit": "1:00:00", "env": {"A": "b"}},
        {"command": ["echo", "hi"], "account": "science", "gpus": 1},
    )
    invalid_options = (
        {"cpus": 0},
        {"cpus": "2"},
        {"cpus": True},
        {"memory": "lots"},
        {"memory": 512},
        {"gpus": 0},
        {"gpus": "a100:x"},
        {"time_limit": "soon"},
        {"time_limit": 0},
        {"env": {"A": 1}},
        {"env": {"1BAD": "x"}},
        {"command": []},
        {"command": "echo hi"},
        {"partition": "two words"},
    )

    @pytest.fixture
    def provider(self, slurm_cluster: SlurmCluster) -> Provider:
        self.cluster = slurm_cluster
        return SlurmProvider(slurm_cluster.provider_config())

    async def assert_stopped(self, provider: Provider, handle: Handle) -> None:
        fields = await asyncio.to_thread(self.cluster.job_fields, handle.resource_id[6:])
        assert fields.get("JobState") == "CANCELLED", fields


# ---- provider-specific checks -----------------------------------------------------------


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    path = write_step_module(tmp_path / "bundle")
    with open(path / f"{STEP_MODULE}.py", "a", encoding="utf-8") as fh:
        fh.write(EXTRA_STEPS)
    return path


@pytest.fixture
def provider(slurm_cluster: SlurmCluster) -> SlurmProvider:
    return SlurmProvider(slurm_cluster.provider_config())


def make_spec(bundle: Path, function: str, *args: Any, **kw: Any) -> ExecutionSpec:
    attempt_id = uuid.uuid4().hex
    return ExecutionSpec(
        attempt_id=attempt_id,
        flow_run_id="run-1",
        step_run_id=f"sr-{attempt_id[:8]}",
        step_key=f"{function}#1",
        step_name=function,
        attempt_number=1,
        module=STEP_MODULE,
        function=function,
        inputs_json=json.dumps({"args": list(args), "kwargs": {}}),
        bundle_dir=bundle,
        work_dir=bundle.parent / "work" / attempt_id,
        timeout_s=kw.get("timeout_s"),
        options=kw.get("options", {}),
    )


def job_id(handle: Handle) -> str:
    assert handle.resource_id.startswith("slurm:")
    return handle.resource_id.removeprefix("slurm:")


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 40))


async def read_pid(path: Path) -> int:
    deadline = time.monotonic() + 15
    while not path.exists():
        assert time.monotonic() < deadline, "the step never started"
        await asyncio.sleep(0.05)
    return int(path.read_text())


def test_exit_code_of_a_python_step(provider: SlurmProvider, bundle: Path) -> None:
    async def scenario() -> Any:
        handle = await provider.submit(make_spec(bundle, "die", 3))
        return await provider.wait(handle)

    outcome = run(scenario())
    assert outcome.state == "failed" and outcome.exit_code == 3
    assert outcome.error is not None and outcome.error.error_class == "transient"
    assert "exited with code 3" in outcome.error.message
    assert "about to die" in outcome.error.message  # the stderr tail


def test_plain_command_exit_codes_and_logs(
    provider: SlurmProvider, bundle: Path, slurm_cluster: SlurmCluster
) -> None:
    ok = make_spec(bundle, "cmd", options={"command": ["sh", "-c", "echo hello; echo oops >&2"]})
    bad = make_spec(bundle, "cmd", options={"command": ["sh", "-c", "exit 7"]})

    async def scenario() -> Any:
        h_ok, h_bad = await provider.submit(ok), await provider.submit(bad)
        records = [r async for r in provider.logs(h_ok)]
        return await provider.wait(h_ok), await provider.wait(h_bad), records, h_bad

    good, failed, records, h_bad = run(scenario())
    assert good.state == "succeeded" and good.result_json == "null" and good.exit_code == 0
    assert [(r.stream, r.text) for r in records] == [("stdout", "hello"), ("stderr", "oops")]
    assert failed.state == "failed" and failed.exit_code == 7
    assert failed.error is not None and failed.error.error_class == "transient"
    # Slurm agrees: the exit code is the job's own, not something we made up.
    fields = slurm_cluster.job_fields(job_id(h_bad))
    assert fields["JobState"] == "FAILED" and fields["ExitCode"] == "7:0"


@pytest.mark.parametrize("ignore_term", [False, True], ids=["term", "kill-after-grace"])
def test_cancel_scancels_the_job(
    provider: SlurmProvider, bundle: Path, slurm_cluster: SlurmCluster, ignore_term: bool
) -> None:
    pid_file = bundle.parent / f"pid-{uuid.uuid4().hex[:6]}"
    spec = make_spec(bundle, "record_pid_and_wait", str(pid_file), ignore_term)

    async def scenario() -> tuple[Handle, Any, int, float]:
        handle = await provider.submit(spec)
        pid = await read_pid(pid_file)
        started = time.monotonic()
        await provider.cancel(handle, 1.0)
        outcome = await provider.wait(handle)
        elapsed = time.monotonic() - started
        await provider.cancel(handle, 1.0)  # idempotent once the job is over
        return handle, outcome, pid, elapsed

    handle, outcome, pid, elapsed = run(scenario())
    assert outcome.state == "cancelled"
    assert outcome.error is not None and outcome.error.error_class == "cancelled"
    assert not Path(f"/proc/{pid}").exists(), "the step process survived scancel"
    if ignore_term:  # killed by the script 1 s after SIGTERM, not at the cluster's KillWait
        assert elapsed >= 1.0  # never early; how late depends on load
    assert slurm_cluster.job_fields(job_id(handle))["JobState"] == "CANCELLED"


def test_sbatch_options_reach_slurm(
    provider: SlurmProvider, bundle: Path, slurm_cluster: SlurmCluster
) -> None:
    options = {"partition": "batch", "cpus": 2, "memory": "256M", "env": {"GREETING": "hi"}}
    spec = make_spec(
        bundle, "show_env", "GREETING", "MERIDIAN_ATTEMPT_ID", "MERIDIAN_STEP_KEY",
        timeout_s=30, options=options,
    )  # fmt: skip

    async def scenario() -> tuple[Handle, Any]:
        handle = await provider.submit(spec)
        return handle, await provider.wait(handle)

    handle, outcome = run(scenario())
    assert outcome.state == "succeeded", outcome
    assert json.loads(outcome.result_json) == {
        "GREETING": "hi",
        "MERIDIAN_ATTEMPT_ID": spec.attempt_id,
        "MERIDIAN_STEP_KEY": "show_env#1",
    }
    fields = slurm_cluster.job_fields(job_id(handle))
    assert fields["Partition"] == "batch"
    assert fields["CPUs/Task"] == "2"
    assert fields["MinMemoryNode"] == "256M"
    assert fields["JobName"] == "show_env#1"
    assert fields["TimeLimit"] == "00:02:00"  # ceil((30 s timeout + 1 s grace + 60 s) / 60)
    assert fields["Requeue"] == "0"
    assert f"attempt={spec.attempt_id}" in fields["Comment"]
    assert fields["StdOut"] == str(spec.work_dir.resolve() / job.STDOUT_LOG)


def test_invalid_options_never_reach_sbatch(provider: SlurmProvider, bundle: Path) -> None:
    spec = make_spec(bundle, "add", 1, 2, options={"memory": "a lot"})
    with pytest.raises(ProviderOptionsError, match="memory"):
        run(provider.submit(spec))
    assert not spec.work_dir.exists()


def test_sbatch_error_is_reported_with_slurms_message(
    provider: SlurmProvider, bundle: Path
) -> None:
    spec = make_spec(bundle, "add", 1, 2, options={"partition": "nosuchpartition"})
    with pytest.raises(ProviderError, match="Invalid partition name") as info:
        run(provider.submit(spec))
    assert not isinstance(info.value, ProviderOptionsError)  # infrastructure, not options


def test_recover_with_a_new_instance(
    provider: SlurmProvider, bundle: Path, slurm_cluster: SlurmCluster
) -> None:
    spec = make_spec(bundle, "slow_add", 2, 3, 0.5)

    async def scenario() -> tuple[bool, Any, bool]:
        saved = (await provider.submit(spec)).to_json()
        fresh = SlurmProvider(slurm_cluster.provider_config())
        handle = Handle.from_json(saved)
        recovered = await fresh.recover(handle)
        outcome = await fresh.wait(handle)
        # After the job ended it is still recoverable (slurmctld and the outcome file know it).
        again = await SlurmProvider(slurm_cluster.provider_config()).recover(handle)
        return recovered, outcome, again

    recovered, outcome, again = run(scenario())
    assert recovered and again
    assert outcome.state == "succeeded" and json.loads(outcome.result_json) == 5


def test_recover_after_slurm_forgot_the_job(provider: SlurmProvider, tmp_path: Path) -> None:
    """Past MinJobAge scontrol no longer knows the job: the files in the job dir still tell."""
    job_dir = tmp_path / "gone"
    job_dir.mkdir()
    handle = Handle("slurm", "slurm:999999", {"job_id": "999999", "job_dir": str(job_dir)})
    assert run(provider.recover(handle)) is False
    (job_dir / "outcome.json").write_text('{"state": "succeeded", "result_json": "42"}')
    (job_dir / job.EXIT_CODE_FILE).write_text("0\n")
    assert run(provider.recover(handle)) is True
    outcome = run(provider.wait(handle))
    assert outcome.state == "succeeded" and outcome.result_json == "42" and outcome.exit_code == 0


def test_bin_dir_without_slurm_is_a_clear_error(bundle: Path, tmp_path: Path) -> None:
    provider = SlurmProvider({"bin_dir": str(tmp_path)})
    with pytest.raises(ProviderError, match="bin_dir"):
        run(provider.submit(make_spec(bundle, "add", 1, 2)))


# ---- pure functions ---------------------------------------------------------------------


def test_config_is_checked() -> None:
    with pytest.raises(ProviderError, match="no_such_key"):
        SlurmProvider({"no_such_key": 1})
    with pytest.raises(ProviderError, match="default_time_limit"):
        SlurmProvider({"default_time_limit": "forever"})
    with pytest.raises(ProviderError, match="extra_sbatch_args"):
        SlurmProvider({"extra_sbatch_args": "--exclusive"})


def test_sbatch_argv_renders_config_and_options(tmp_path: Path) -> None:
    config = SlurmConfig.of(
        {
            "bin_dir": "/opt/slurm/bin",
            "partition": "cpu",
            "account": "lab",
            "default_time_limit": "2:00:00",
            "extra_sbatch_args": ["--exclusive"],
        }
    )
    spec = make_spec(tmp_path, "add", options={"gpus": "a100:2", "qos": "high", "cpus": 4})
    argv = job.sbatch_argv(config, spec, tmp_path)
    assert argv[0] == "/opt/slurm/bin/sbatch" and argv[-1] == str(tmp_path / "job.sh")
    for arg in ("--partition=cpu", "--account=lab", "--gpus=a100:2", "--qos=high"):
        assert arg in argv
    assert "--cpus-per-task=4" in argv and "--time=2:00:00" in argv
    assert argv[-2] == "--exclusive"
    override = make_spec(tmp_path, "add", options={"partition": "gpu", "time_limit": 90})
    argv = job.sbatch_argv(config, override, tmp_path)
    assert "--partition=gpu" in argv and "--time=90" in argv


@pytest.mark.parametrize(
    ("state", "error_class", "outcome_state"),
    [
        ("NODE_FAIL", "infrastructure", "failed"),
        ("PREEMPTED", "infrastructure", "failed"),
        ("BOOT_FAIL", "infrastructure", "failed"),
        ("TIMEOUT", "timeout", "timed_out"),
        ("CANCELLED", "infrastructure", "failed"),  # cancelled by someone else
        ("OUT_OF_MEMORY", "transient", "failed"),
    ],
)
def test_terminal_states_map_to_outcomes(
    tmp_path: Path, state: str, error_class: str, outcome_state: str
) -> None:
    attempt = Attempt(job_id="7", job_dir=tmp_path, timeout_s=None, command=False)
    info = job.parse_job(f"JobId=7 JobState={state} Reason=None ExitCode=0:9 Comment=x")
    assert info is not None and not info.active
    outcome = conclude(attempt, info)
    assert outcome.state == outcome_state and outcome.exit_code == -9
    assert outcome.error is not None and outcome.error.error_class == error_class


def test_parse_exit_code() -> None:
    assert job.parse_exit_code("0:0") == 0
    assert job.parse_exit_code("7:0") == 7
    assert job.parse_exit_code("0:15") == -15
    assert job.parse_exit_code("") is None


def test_held_job_queue_time_does_not_count_and_cancel_works(
    bundle: Path, slurm_cluster: SlurmCluster
) -> None:
    """extra_sbatch_args reach sbatch (--hold keeps the job PENDING); cancel scancels it."""
    held = SlurmProvider(slurm_cluster.provider_config(extra_sbatch_args=["--hold"]))
    spec = make_spec(bundle, "add", 1, 2, timeout_s=0.5)

    async def scenario() -> tuple[Handle, Any, list[Any]]:
        handle = await held.submit(spec)
        with pytest.raises(TimeoutError):  # still queued: its 0.5 s timeout has not started
            await asyncio.wait_for(held.wait(handle), 1.5)
        assert await held.poll(handle) is None
        logs = asyncio.create_task(_collect(held, handle))
        await held.cancel(handle, 0.5)
        return handle, await held.wait(handle), await logs

    handle, outcome, records = run(scenario())
    assert outcome.state == "cancelled"
    assert records == []  # the job never ran, and the log stream still ended
    assert slurm_cluster.job_fields(job_id(handle))["JobState"] == "CANCELLED"


async def _collect(provider: SlurmProvider, handle: Handle) -> list[Any]:
    return [record async for record in provider.logs(handle)]


def test_shared_dir_holds_the_job_files(
    bundle: Path, slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    provider = SlurmProvider(slurm_cluster.provider_config(shared_dir=str(shared)))
    spec = make_spec(bundle, "add", 20, 22)

    async def scenario() -> tuple[Handle, Any]:
        handle = await provider.submit(spec)
        return handle, await provider.wait(handle)

    handle, outcome = run(scenario())
    assert outcome.state == "succeeded" and outcome.result_json == "42"
    job_dir = shared / spec.attempt_id
    assert handle.data["job_dir"] == str(job_dir.resolve())
    assert {"job.sh", "spec.json", "outcome.json", "stdout.log"} <= {
        p.name for p in job_dir.iterdir()
    }
