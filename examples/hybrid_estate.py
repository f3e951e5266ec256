"""One flow, four environments at once: AWS ECS, Google Cloud Run, a Slurm cluster, a data centre.

``hybrid_estate`` submits one step to each environment with ``.submit()`` so all four run in
parallel, then collects their results. Each step names the agents that may run it (``target``)
and the provider those agents use to run it (``provider``)::

    step                  target     provider       runs as
    ingest_on_ecs         cloud=aws  aws-ecs        a container command in an ECS task
    render_on_cloud_run   cloud=gcp  gcp-cloud-run  a container command in a Cloud Run execution
    simulate_on_slurm     site=hpc   slurm          Python, in an sbatch job
    summarize_on_prem     site=dc1   process        Python, in a process on the agent's host

``hybrid_estate_hold`` is the same fan-out with every step busy for ``seconds``: start it, then
``meridian runs cancel RUN`` stops the work in every backend (ECS StopTask, Cloud Run
CancelExecution, ``scancel``, SIGTERM to the process group).

Running it against real infrastructure (docs/hybrid-estate.md has the details)
------------------------------------------------------------------------------

1. A control plane: ``meridian server start --data-dir /var/lib/meridian``.
2. One agent per environment, each enrolled once (``meridian tokens create`` on the control
   plane host, ``meridian agent enroll`` on the agent's host) and started with the config file
   of its provider; each ``[providers.TYPE]`` section is that provider's config::

       # aws.toml - on a host (or ECS service) with an IAM role allowed to run the tasks
       [providers.aws-ecs]
       region = "eu-west-1"
       cluster = "meridian"
       task_definition = "meridian-step"   # Fargate, awslogs log configuration
       subnets = ["subnet-0123456789abcdef0"]
       security_groups = ["sg-0123456789abcdef0"]

       # gcp.toml - with application default credentials (workload identity, ...)
       [providers.gcp-cloud-run]
       project = "my-project"
       region = "europe-west1"
       job = "meridian-steps"              # an existing Cloud Run job

       # hpc.toml - on a login node (sbatch/scontrol/scancel, a filesystem shared with nodes)
       [providers.slurm]
       partition = "batch"
       default_time_limit = "30"

       # dc1.toml
       [providers.process]
       kill_grace_s = 10

       meridian agent start --environment aws-prod --label cloud=aws --config aws.toml
       meridian agent start --environment gcp-prod --label cloud=gcp --config gcp.toml
       meridian agent start --environment hpc --label site=hpc --config hpc.toml
       meridian agent start --environment dc1 --label site=dc1 --config dc1.toml

3. ``meridian run examples/hybrid_estate.py:hybrid_estate -p day=2024-06-01``, then
   ``meridian runs show RUN``: one row per attempt with its environment, agent, provider and
   the resource that ran it (task ARN, execution name, ``slurm:<job id>``, ``pid:<n>``).

The container images need only a POSIX shell (``sh``, ``echo``, ``sleep``): the two container
steps are plain commands, so their result is ``None`` and their exit code decides the outcome.
"""

from __future__ import annotations

import os
import random
import socket
import time
from typing import Any

from meridian import flow, step, wait


def container(command: list[str], **env: str) -> dict[str, Any]:
    """Provider options of a container command step (ECS and Cloud Run take the same ones)."""
    return {"command": command, "env": env} if env else {"command": command}


def shell(script: str, **env: str) -> dict[str, Any]:
    return container(["sh", "-c", script], **env)


def hold(seconds: int) -> dict[str, Any]:
    return container(["sleep", str(seconds)])


# ---- the four steps ----------------------------------------------------------------------------


@step(target="cloud=aws", provider="aws-ecs", timeout=1800)
def ingest_on_ecs(day: str) -> None:
    """Land the day's raw files: an ECS task running the ``command`` option in its container.

    Only the options travel (a command step runs no Python), so each call passes its command
    with ``with_options``; this body runs only when the function is called outside a flow.
    """
    print(f"ingest {day}")


@step(target="cloud=gcp", provider="gcp-cloud-run", timeout=1800)
def render_on_cloud_run(day: str) -> None:
    """Render the day's dashboards: one execution of the Cloud Run job, with overridden args."""
    print(f"render {day}")


@step(target="site=hpc", provider="slurm", timeout=1800)
def simulate_on_slurm(day: str, hold_s: int = 0) -> dict[str, Any]:
    """A Python step run as a Slurm batch job: a small Monte Carlo estimate of pi."""
    time.sleep(hold_s)
    rng = random.Random(day)  # the same day gives the same estimate
    samples = 20_000
    inside = sum(1 for _ in range(samples) if rng.random() ** 2 + rng.random() ** 2 <= 1.0)
    pi = round(4 * inside / samples, 3)
    print(f"simulated {day}: pi ~ {pi} from {samples} samples")  # shows in `meridian runs logs`
    return {
        "pi": pi,
        "samples": samples,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "host": socket.gethostname(),
    }


@step(target="site=dc1", provider="process", timeout=1800)
def summarize_on_prem(day: str, hold_s: int = 0) -> dict[str, Any]:
    """A Python step run as a process on the data centre's agent host."""
    time.sleep(hold_s)
    print(f"summarized {day} on {socket.gethostname()}")
    return {"day": day, "pid": os.getpid(), "host": socket.gethostname()}


# ---- the flows ---------------------------------------------------------------------------------


@flow
def hybrid_estate(day: str = "2024-06-01") -> dict[str, Any]:
    """All four environments at once; the result has one entry per environment."""
    # A command step's options carry its command: with_options sets them for this call.
    ingest = ingest_on_ecs.with_options(options=shell('echo "ingesting $DAY"', DAY=day))
    render = render_on_cloud_run.with_options(options=shell('echo "rendering $DAY"', DAY=day))
    futures = {
        "aws": ingest.submit(day),
        "gcp": render.submit(day),
        "hpc": simulate_on_slurm.submit(day),
        "dc1": summarize_on_prem.submit(day),
    }
    # .result() waits; the four steps are already running side by side.
    return {environment: future.result() for environment, future in futures.items()}


@flow
def hybrid_estate_hold(seconds: int = 600) -> list[Any]:
    """The same four environments, each step busy for ``seconds``: made to be cancelled."""
    return wait(
        [
            ingest_on_ecs.with_options(options=hold(seconds)).submit("hold"),
            render_on_cloud_run.with_options(options=hold(seconds)).submit("hold"),
            simulate_on_slurm.submit("hold", hold_s=seconds),
            summarize_on_prem.submit("hold", hold_s=seconds),
        ]
    )
