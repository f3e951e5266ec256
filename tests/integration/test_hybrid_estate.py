"""End to end: ``examples/hybrid_estate.py`` fans one flow out to four environments at once.

A real control plane and four real agents run as separate processes (started through the
``meridian`` CLI, talking gRPC over TLS on loopback). Each agent gets its provider's endpoint
and credentials from its ``--config`` file, as in production. What each backend is:

* ``aws-ecs`` (label: emulator) - moto 5.2.5 in server mode, reached over HTTP by real boto3 in
  the agent. moto records tasks but runs no container, so the ECS step is a plain ``command``
  step: its task advances RUNNING -> ... -> STOPPED with exit code 0 as the agent polls it.
* ``gcp-cloud-run`` (label: contract) - our gRPC fake of the Cloud Run Admin API
  (tests/providers/gcp_run_fake.py), reached by the real ``google-cloud-run`` client in the agent.
  The fake scripts executions (no container runs: the scripted output stands in for what the
  command would print), so this step is a ``command`` step too. The agent reads that output the
  production way - application default credentials (an ``authorized_user`` file) and Cloud
  Logging's ``entries:list`` - from ``FakeCloudLogging`` (tests/integration/hybrid_support.py),
  our fake of that one REST method.
* ``slurm`` (label: integration) - a real single-node Slurm (munged, slurmctld, slurmd) that
  this module starts; the Python step really runs as an ``sbatch`` job.
* ``process`` (label: integration) - the Python step runs as a real local process.

The first test runs the flow to COMPLETED and checks that ``meridian runs show --json`` names,
for each attempt, its environment, agent, provider and cloud resource - and that each resource
exists in its backend and belongs to that attempt. The second runs the "hold" variant (ECS
task frozen RUNNING through moto's state manager, a long Cloud Run execution in the fake, a
sleeping Slurm job, a sleeping process), cancels it with ``meridian runs cancel`` and checks
that every backend cleaned up: StopTask with our reason, CancelExecution, a CANCELLED Slurm
job, a dead process.

The two end-to-end tests are skipped only when the Slurm binaries are missing
(.ci/slurm-setup.sh installs them); the Slurm fixture also needs root, like tests/providers.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from meridian.cli.agent_config import load_agent_config_file
from providers.registry import load_provider
from tests.integration.harness import REPO
from tests.integration.hybrid_support import (
    FakeCloudLogging,
    ProviderEstate,
    eventually,
    process_alive,
    write_agent_config,
)
from tests.providers.gcp_run_fake import FakeCloudRun
from tests.providers.moto_fixture import ACCOUNT, CLUSTER, REGION, MotoEcs, moto_ecs
from tests.providers.slurm_cluster import SlurmCluster, running_cluster
from tests.support.deadlines import DEADLINE_S

SLURM_BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "sinfo", "squeue", "scontrol")
pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

EXAMPLE = REPO / "examples" / "hybrid_estate.py"
CLOUD_RUN_JOB = "meridian-steps"

# environment -> (labels, provider, step that must land there)
ENVIRONMENTS: dict[str, tuple[dict[str, str], str, str]] = {
    "aws-us-east-1": ({"cloud": "aws", "region": REGION}, "aws-ecs", "ingest_on_ecs"),
    "gcp-europe-west1": (
        {"cloud": "gcp", "region": "europe-west1"},
        "gcp-cloud-run",
        "render_on_cloud_run",
    ),
    "hpc": ({"site": "hpc"}, "slurm", "simulate_on_slurm"),
    "dc1": ({"site": "dc1"}, "process", "summarize_on_prem"),
}


@dataclass
class Hybrid:
    estate: ProviderEstate
    moto: MotoEcs
    cloud_run: FakeCloudRun
    cloud_logging: FakeCloudLogging
    slurm: SlurmCluster


def _provider_configs(
    moto: MotoEcs, cloud_run: FakeCloudRun, cloud_logging: FakeCloudLogging, slurm: SlurmCluster
) -> dict[str, dict[str, Any]]:
    """Each agent's ``[providers.TYPE]`` section, pointed at its emulator / fake / cluster."""
    return {
        "aws-ecs": moto.provider_config(poll_interval_s=0.1, log_settle_s=0.2),
        "gcp-cloud-run": {
            "project": cloud_run.project,
            "region": cloud_run.region,
            "job": CLOUD_RUN_JOB,
            "endpoint": cloud_run.address,
            "insecure": True,
            "logging_endpoint": cloud_logging.url,
            "poll_interval_s": 0.1,
            "kill_grace_s": 2.0,
            "log_settle_s": 0.5,
        },
        "slurm": slurm.provider_config(),
        "process": {"kill_grace_s": 2.0},
    }


@pytest.fixture(scope="module")
def hybrid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hybrid]:
    missing = [name for name in SLURM_BINARIES if not _which(name)]
    if missing:
        pytest.skip(
            f"{', '.join(missing)} not found: install slurm-wlm and munge (.ci/slurm-setup.sh)"
        )
    root = tmp_path_factory.mktemp("hybrid")
    with contextlib.ExitStack() as stack:
        slurm = stack.enter_context(running_cluster(root / "slurm"))
        moto = stack.enter_context(moto_ecs())
        cloud_run = FakeCloudRun()
        cloud_run.start()
        stack.callback(cloud_run.stop)
        cloud_run.add_job(CLOUD_RUN_JOB)
        cloud_logging = FakeCloudLogging(cloud_run).start()
        stack.callback(cloud_logging.stop)
        adc = cloud_logging.write_credentials(root / "gcp-adc.json")
        estate = ProviderEstate(root / "estate")
        stack.callback(estate.stop)  # first out: agents stop before their backends
        estate.start()
        configs = _provider_configs(moto, cloud_run, cloud_logging, slurm)

        def add(environment: str) -> str:
            labels, provider, _ = ENVIRONMENTS[environment]
            config_file = write_agent_config(
                root / f"{environment}.toml", provider, configs[provider]
            )
            # Only the GCP agent has (fake) application default credentials.
            adc_env = {"GOOGLE_APPLICATION_CREDENTIALS": str(adc)}
            env = adc_env if provider == "gcp-cloud-run" else {}
            return estate.add_provider_agent(environment, labels, provider, config_file, env=env)

        try:
            # Enrolling and starting an agent is a few CLI processes: do the four side by side.
            with ThreadPoolExecutor(max_workers=len(ENVIRONMENTS)) as pool:
                list(pool.map(add, ENVIRONMENTS))
            yield Hybrid(estate, moto, cloud_run, cloud_logging, slurm)
        except BaseException:
            print(estate.logs())
            raise


def _which(name: str) -> bool:
    return bool(shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin"))


def show(estate: ProviderEstate, run_id: str) -> dict[str, Any]:
    shown = estate.cli("runs", "show", run_id, "--json", check=True)
    detail: dict[str, Any] = json.loads(shown.stdout)
    return detail


def only_attempt(detail: dict[str, Any], step_name: str) -> dict[str, Any]:
    (step,) = [s for s in detail["steps"] if s["name"] == step_name]
    (attempt,) = step["attempts"]
    assert isinstance(attempt, dict)
    return attempt


def describe_task(moto: MotoEcs, task_arn: str) -> dict[str, Any]:
    tasks = moto.client("ecs").describe_tasks(cluster=CLUSTER, tasks=[task_arn], include=["TAGS"])
    (task,) = tasks["tasks"]
    return dict(task)


def run_env(cloud_run: FakeCloudRun, execution: str) -> dict[str, str]:
    """The env overrides the agent sent with the RunJob that created ``execution``."""
    override = cloud_run.executions[execution].request.overrides.container_overrides[0]
    return {var.name: var.value for var in override.env}


def test_one_flow_runs_in_four_environments_and_names_every_resource(hybrid: Hybrid) -> None:
    estate, moto = hybrid.estate, hybrid.moto
    moto.set_transition(None)  # moto's default: the task advances one state per DescribeTasks
    # What `sh -c 'echo "rendering $DAY"'` would print; the fake runs no container.
    hybrid.cloud_run.plan(stdout=["rendering 2024-06-01"])
    result = estate.cli("run", f"{EXAMPLE}:hybrid_estate", "-p", "day=2024-06-01", "--json")
    assert result.returncode == 0, result.stdout + result.stderr + estate.logs()
    outcome = json.loads(result.stdout)
    detail = show(estate, outcome["flow_run_id"])
    assert detail["state"] == "COMPLETED"

    attempts = {}
    for environment, (_, provider, step_name) in ENVIRONMENTS.items():
        attempt = only_attempt(detail, step_name)
        assert attempt["state"] == "SUCCEEDED", attempt
        assert attempt["environment"] == environment
        assert attempt["agent_name"] == f"{environment}-agent"
        assert attempt["agent_id"]
        assert attempt["provider"] == provider
        attempts[provider] = attempt

    # ECS: the task ARN is a task moto knows, tagged with this attempt, and it ended normally.
    task_arn = attempts["aws-ecs"]["resource_id"]
    assert task_arn.startswith(f"arn:aws:ecs:{REGION}:{ACCOUNT}:task/")
    task = describe_task(moto, task_arn)
    tags = {tag["key"]: tag["value"] for tag in task["tags"]}
    assert tags["meridian:attempt-id"] == attempts["aws-ecs"]["attempt_id"]
    assert tags["meridian:flow-run-id"] == detail["flow_run_id"]
    (override,) = task["overrides"]["containerOverrides"]
    assert override["command"] == ["sh", "-c", 'echo "ingesting $DAY"']
    assert {"name": "DAY", "value": "2024-06-01"} in override["environment"]
    assert task["lastStatus"] == "STOPPED"

    # Cloud Run: the execution name is one the fake created, for this attempt's RunJob.
    execution = attempts["gcp-cloud-run"]["resource_id"]
    job = f"projects/{hybrid.cloud_run.project}/locations/{hybrid.cloud_run.region}/jobs/"
    assert execution.startswith(f"{job}{CLOUD_RUN_JOB}/executions/")
    assert execution in hybrid.cloud_run.executions
    assert hybrid.cloud_run.executions[execution].state == "succeeded"
    sent = run_env(hybrid.cloud_run, execution)
    assert sent["MERIDIAN_ATTEMPT_ID"] == attempts["gcp-cloud-run"]["attempt_id"]
    assert sent["DAY"] == "2024-06-01"

    # Slurm: a real job id, which the step itself saw as SLURM_JOB_ID; Slurm says COMPLETED.
    slurm_resource = attempts["slurm"]["resource_id"]
    assert slurm_resource.startswith("slurm:")
    job_id = slurm_resource.removeprefix("slurm:")
    assert detail["result"]["hpc"]["slurm_job_id"] == job_id
    assert hybrid.slurm.job_fields(job_id).get("JobState") == "COMPLETED"
    assert 3.0 < detail["result"]["hpc"]["pi"] < 3.3

    # process: the pid is the process that ran the step.
    assert attempts["process"]["resource_id"] == f"pid:{detail['result']['dc1']['pid']}"

    # The container command steps have no Python result.
    assert detail["result"]["aws"] is None and detail["result"]["gcp"] is None

    # Output came back from the backends that produce it: Cloud Run (through Cloud Logging),
    # the Slurm job's output file and the process's pipes.
    logs = estate.cli("runs", "logs", detail["flow_run_id"], check=True).stdout
    assert "render_on_cloud_run#1" in logs and "rendering 2024-06-01" in logs, logs
    assert "simulated 2024-06-01: pi ~" in logs, logs
    assert "summarized 2024-06-01 on" in logs, logs
    assert any(CLOUD_RUN_JOB in r["filter"] for r in hybrid.cloud_logging.list_requests)

    # The human-readable audit view names the same resources.
    text = estate.cli("runs", "show", detail["flow_run_id"], check=True).stdout
    for environment, (_, provider, _) in ENVIRONMENTS.items():
        assert environment in text and provider in text
    assert slurm_resource in text and attempts["process"]["resource_id"] in text


def test_cancelling_the_run_cleans_up_every_backend(hybrid: Hybrid) -> None:
    estate, moto, cloud_run, slurm = hybrid.estate, hybrid.moto, hybrid.cloud_run, hybrid.slurm
    moto.freeze()  # the ECS task stays RUNNING until StopTask
    cloud_run.plan(duration_s=3600)  # the next execution runs for an hour
    runner = estate.cli_background("run", f"{EXAMPLE}:hybrid_estate_hold", "-p", "seconds=600")
    try:
        run_id = estate.latest_run_id("hybrid_estate_hold")
        running: dict[str, dict[str, Any]] = {}

        def all_running() -> bool:
            detail = show(estate, run_id)
            running.clear()
            for step in detail["steps"]:
                for attempt in step["attempts"]:
                    if attempt["state"] == "RUNNING" and attempt["resource_id"]:
                        running[attempt["provider"]] = attempt
            return len(running) == 4

        estate.wait_until(all_running, "all four attempts to run")
        for provider, attempt in running.items():
            assert ENVIRONMENTS[attempt["environment"]][1] == provider

        cancelled = estate.cli("runs", "cancel", run_id, "--wait", f"{DEADLINE_S:g}", check=True)
        assert f"Run {run_id} is CANCELLED" in cancelled.stdout, cancelled.stdout
        assert runner.wait(timeout=DEADLINE_S) != 0
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait(10)
        moto.set_transition(None)

    detail = show(estate, run_id)
    assert detail["state"] == "CANCELLED"
    for _, (_, provider, step_name) in ENVIRONMENTS.items():
        attempt = only_attempt(detail, step_name)
        assert attempt["state"] == "CANCELLED", (provider, attempt)
        assert attempt["resource_id"] == running[provider]["resource_id"]

    # ECS: StopTask reached moto, with the reason that marks a Meridian cancel.
    task = describe_task(moto, running["aws-ecs"]["resource_id"])
    assert task["lastStatus"] == "STOPPED" and task["desiredStatus"] == "STOPPED"
    assert task["stoppedReason"].startswith("meridian: cancelled"), task["stoppedReason"]

    # Cloud Run: the fake received CancelExecution for exactly this execution.
    execution = running["gcp-cloud-run"]["resource_id"]
    assert execution in [request.name for request in cloud_run.calls_of("CancelExecution")]
    assert cloud_run.executions[execution].state == "cancelled"

    # Slurm: the job was scancel'ed and leaves the queue.
    job_id = running["slurm"]["resource_id"].removeprefix("slurm:")
    eventually(
        lambda: slurm.job_fields(job_id).get("JobState") == "CANCELLED",
        f"Slurm job {job_id} to be CANCELLED",
    )
    eventually(
        lambda: job_id not in slurm.run("squeue", "-h", "-o", "%i").stdout.split(),
        f"Slurm job {job_id} to leave the queue",
    )

    # process: the step's process is gone.
    pid = int(running["process"]["resource_id"].removeprefix("pid:"))
    eventually(lambda: not process_alive(pid), f"step process {pid} to exit")


def test_the_example_agent_configs_are_valid(tmp_path: Path) -> None:
    """Each ``[providers.TYPE]`` block in the example's docstring loads through the agent's
    config loader and is accepted by its provider (no backend is contacted)."""
    docstring = EXAMPLE.read_text(encoding="utf-8").split('"""')[1]
    blocks: list[list[str]] = []
    current: list[str] | None = None
    for line in docstring.splitlines():
        text = line.strip()
        if text.startswith("[providers."):
            current = [text]
            blocks.append(current)
        elif not text or text.startswith("meridian "):
            current = None  # a block ends at a blank line
        elif current is not None and not text.startswith("#"):
            current.append(text)
    assert len(blocks) == 4
    for number, block in enumerate(blocks):
        path = tmp_path / f"agent-{number}.toml"
        path.write_text("\n".join(block) + "\n", encoding="utf-8")
        loaded: Any = load_agent_config_file(path)
        # the loader returns the provider sections, or an object holding them (``.providers``)
        providers: dict[str, dict[str, Any]] = getattr(loaded, "providers", loaded)
        ((kind, section),) = providers.items()
        assert load_provider(kind, section).type == kind
