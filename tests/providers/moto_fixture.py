"""moto in server mode for the ECS provider tests, plus a stand-in container runtime.

``moto_ecs()`` starts ``moto.server.ThreadedMotoServer`` on a free 127.0.0.1 port (a real HTTP
server: the provider talks to it through real boto3 clients) and creates what ECS needs in moto:
a VPC with DNS hostnames, a subnet, a security group, a cluster, a Fargate task definition with
an ``awslogs`` log configuration, and its log group.

moto records tasks but runs nothing. ``LocalContainerRuntime`` stands in for the container
runtime: it watches moto's ECS backend (reachable because the threaded server runs in this
process), runs each new task's overridden command as a local subprocess with the overridden
environment (``meridian-step`` becomes ``python -m meridian.stepexec``), ships the merged
stdout/stderr lines to the task's CloudWatch Logs stream through the logs API, and on exit sets
the container's exit code and the task's ``STOPPED`` state in the backend. A ``StopTask`` (which
moto applies at once) kills the subprocess. While it runs, moto's own state progression is
frozen through ``/moto-api/state-manager/set-transition``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

ACCOUNT = "123456789012"
REGION = "us-east-1"
CLUSTER = "meridian-test"
FAMILY = "meridian-step"
CONTAINER = "step"
LOG_GROUP = "/meridian/steps"
LOG_PREFIX = "meridian"
TASK_TRANSITION = "ecs::task"


@dataclass(frozen=True)
class MotoEcs:
    url: str
    subnet: str
    security_group: str
    task_definition_arn: str

    def client(self, service: str) -> Any:
        import boto3

        return boto3.client(
            service,
            region_name=REGION,
            endpoint_url=self.url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def provider_config(self, **overrides: Any) -> dict[str, Any]:
        config: dict[str, Any] = {
            "region": REGION,
            "cluster": CLUSTER,
            "task_definition": FAMILY,
            "subnets": [self.subnet],
            "security_groups": [self.security_group],
            "endpoint_url": self.url,
            "access_key_id": "testing",
            "secret_access_key": "testing",
            "poll_interval_s": 0.02,
            "kill_grace_s": 2.0,
            "log_settle_s": 0.3,
        }
        config.update(overrides)
        return config

    def set_transition(self, transition: dict[str, Any] | None) -> None:
        """Set (or with None, reset) how moto advances ECS tasks on each describe_tasks."""
        action = "set-transition" if transition else "unset-transition"
        body: dict[str, Any] = {"model_name": TASK_TRANSITION}
        if transition:
            body["transition"] = transition
        request = urllib.request.Request(
            f"{self.url}/moto-api/state-manager/{action}",
            data=json.dumps(body).encode(),
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=5):
            pass

    def freeze(self) -> None:
        """Tasks stay in their state until a test (or the runtime) changes it."""
        self.set_transition({"progression": "manual", "times": 10**9})

    def task(self, task_arn: str) -> Any:
        """moto's in-process model of a task (to change what the emulator reports)."""
        from moto.ecs.models import ecs_backends

        return ecs_backends[ACCOUNT][REGION].tasks[CLUSTER][task_arn]

    def seed_logs(self, task_arn: str, lines: list[str], logs: Any = None) -> str:
        """Write ``lines`` to the task's awslogs stream (``prefix/container/task-id``)."""
        logs = logs or self.client("logs")
        stream = f"{LOG_PREFIX}/{CONTAINER}/{task_arn.rsplit('/', 1)[-1]}"
        with contextlib.suppress(logs.exceptions.ResourceAlreadyExistsException):
            logs.create_log_stream(logGroupName=LOG_GROUP, logStreamName=stream)
        now = int(time.time() * 1000)
        events = [{"timestamp": now + i, "message": line} for i, line in enumerate(lines)]
        if events:
            logs.put_log_events(logGroupName=LOG_GROUP, logStreamName=stream, logEvents=events)
        return stream


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def moto_ecs() -> Iterator[MotoEcs]:
    """A running moto server with the ECS, EC2 and CloudWatch Logs resources the tests use."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        # moto keeps its backends in this process: start from a clean account every time, or
        # resources another test module created (with the same names) would still be there.
        urllib.request.urlopen(
            urllib.request.Request(f"http://127.0.0.1:{port}/moto-api/reset", method="POST"),
            timeout=10,
        ).close()
        env = MotoEcs(f"http://127.0.0.1:{port}", "", "", "")
        ec2 = env.client("ec2")
        vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
        ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.20.1.0/24")["Subnet"]["SubnetId"]
        sg = ec2.create_security_group(GroupName="meridian", Description="steps", VpcId=vpc)
        ecs = env.client("ecs")
        ecs.create_cluster(clusterName=CLUSTER)
        task_def = ecs.register_task_definition(
            family=FAMILY,
            networkMode="awsvpc",
            requiresCompatibilities=["FARGATE"],
            cpu="256",
            memory="512",
            containerDefinitions=[
                {
                    "name": CONTAINER,
                    "image": "registry.example/meridian-steps:1",
                    "memory": 512,  # moto 5.2.5 answers HTTP 500 without a container memory
                    "essential": True,
                    "logConfiguration": {
                        "logDriver": "awslogs",
                        "options": {
                            "awslogs-group": LOG_GROUP,
                            "awslogs-region": REGION,
                            "awslogs-stream-prefix": LOG_PREFIX,
                        },
                    },
                }
            ],
        )
        env.client("logs").create_log_group(logGroupName=LOG_GROUP)
        yield MotoEcs(
            env.url,
            subnet,
            sg["GroupId"],
            task_def["taskDefinition"]["taskDefinitionArn"],
        )
    finally:
        server.stop()


class LocalContainerRuntime:
    """Runs moto's ECS tasks as local subprocesses (see the module docstring)."""

    def __init__(self, env: MotoEcs) -> None:
        self.env = env
        self._seen: set[str] = set()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._running: dict[str, subprocess.Popen[bytes]] = {}  # task ARN -> its process
        self._stop_task: Any = None
        self._watcher = threading.Thread(target=self._watch, name="ecs-runtime", daemon=True)

    def __enter__(self) -> LocalContainerRuntime:
        from moto.ecs.models import ecs_backends

        backend = ecs_backends[ACCOUNT][REGION]
        # Tasks that existed before belong to other tests: never run them.
        self._seen.update(backend.tasks.get(CLUSTER, {}))
        self.env.freeze()
        # moto's StopTask reports the task STOPPED at once; ECS does only once the container
        # exited, and the provider relies on that. Tasks this runtime runs stop as on ECS.
        self._stop_task = backend.stop_task
        backend.stop_task = self._stop_task_as_ecs
        self._watcher.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._watcher.join(5)
        for thread in self._threads:
            thread.join(10)
        from moto.ecs.models import ecs_backends

        del ecs_backends[ACCOUNT][REGION].stop_task  # moto's own method again
        self.env.set_transition(None)

    def _stop_task_as_ecs(self, cluster_str: str, task_str: str, reason: str) -> Any:
        arn = next((a for a in self._running if a.endswith(task_str.split("/")[-1])), None)
        proc = self._running.get(arn) if arn else None
        if arn is None or proc is None or proc.poll() is not None:
            return self._stop_task(cluster_str, task_str, reason)
        from moto.ecs.models import ecs_backends

        task = ecs_backends[ACCOUNT][REGION].tasks[CLUSTER][arn]
        # The runtime stops the process, then reports STOPPED (``_run``).
        task.desired_status, task.stopped_reason = "STOPPED", reason
        task.last_status = "DEACTIVATING"
        return task

    def _watch(self) -> None:
        from moto.ecs.models import ecs_backends

        backend = ecs_backends[ACCOUNT][REGION]
        while not self._stop.is_set():
            for arn, task in list(backend.tasks.get(CLUSTER, {}).items()):
                if arn not in self._seen:
                    self._seen.add(arn)
                    thread = threading.Thread(target=self._run, args=(arn, task), daemon=True)
                    self._threads.append(thread)
                    thread.start()
            time.sleep(0.02)

    def _run(self, arn: str, task: Any) -> None:
        override = task.overrides["containerOverrides"][0]
        command = list(override["command"])
        if command[0] == "meridian-step":
            command[:1] = [sys.executable, "-m", "meridian.stepexec"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MERIDIAN_")}
        env.update({e["name"]: e["value"] for e in override.get("environment", [])})
        proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # awslogs merges both streams into one
            env=env,
            start_new_session=True,
        )
        self._running[arn] = proc
        killer = threading.Thread(target=self._stop_on_request, args=(task, proc), daemon=True)
        killer.start()
        assert proc.stdout is not None
        logs = self.env.client("logs")
        stream = self.env.seed_logs(arn, [], logs)
        last_ms = 0
        for raw in proc.stdout:
            last_ms = max(int(time.time() * 1000), last_ms + 1)  # keeps lines in their order
            line = raw.decode("utf-8", "replace").rstrip("\n")
            event = {"timestamp": last_ms, "message": line}
            logs.put_log_events(logGroupName=LOG_GROUP, logStreamName=stream, logEvents=[event])
        rc = proc.wait()
        killer.join(5)
        container = task.containers[0]
        container.exitCode = 128 - rc if rc < 0 else rc  # killed by a signal: 128 + signum
        if task.desired_status == "STOPPED":
            task.stop_code = "UserInitiated"  # what ECS reports after StopTask
            task.last_status = "STOPPED"  # only now that the container exited
        else:  # the essential container exited on its own
            task.stop_code = "EssentialContainerExited"
            task.stopped_reason = "Essential container in task exited"
            task.desired_status = "STOPPED"
            task.last_status = "STOPPED"

    def _stop_on_request(self, task: Any, proc: subprocess.Popen[bytes]) -> None:
        while proc.poll() is None:
            if task.desired_status == "STOPPED" or self._stop.is_set():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(2)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                return
            time.sleep(0.02)
