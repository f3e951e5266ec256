"""A contract fake of the Cloud Run Admin API v2 (jobs, executions, tasks, operations) over gRPC.

No Cloud Run emulator exists and ``google-cloud-run`` ships client stubs only, so this module
serves the few methods the ``gcp-cloud-run`` provider calls with ``grpc`` generic handlers,
using the package's own ``run_v2`` message classes (and ``google.longrunning`` protos) as the
(de)serializers: the real client sends real requests and parses real responses.

Served: ``Jobs/RunJob`` (returns a ``google.longrunning.Operation`` whose metadata is the
Execution), ``Operations/GetOperation``, ``Executions/GetExecution``,
``Executions/CancelExecution``, ``Tasks/ListTasks``. Every call is recorded in ``calls``.

Executions follow a ``Plan``: scripted (an outcome, a task exit code, a duration and log lines),
or ``run_locally``, where the fake runs the container's args as a local subprocess with the
overridden env (``meridian-step`` becomes ``python -m meridian.stepexec``) and captures its
stdout/stderr as the execution's log lines. ``FakeLogSource`` reads those lines, standing in
for Cloud Logging. What this fake does NOT check: IAM, images, quotas, request validation
beyond unknown jobs, the real timing of Cloud Run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import grpc
from google.cloud import run_v2
from google.longrunning import operations_pb2
from google.protobuf import any_pb2, timestamp_pb2

from providers.gcp_cloud_run.logs import LogEntry

Outcome = Literal["succeeded", "failed", "cancelled"]
_REPO = Path(__file__).resolve().parents[2]


@dataclass
class Plan:
    """How the next execution behaves."""

    outcome: Outcome = "succeeded"
    exit_code: int = 0
    duration_s: float = 0.2
    stdout: Sequence[str] = ()
    stderr: Sequence[str] = ()
    run_locally: bool = False
    #: GetOperation calls before the operation carries its metadata (exercises the LRO poll)
    metadata_after_polls: int = 0
    #: end the task as failed when it outlives the RunJob timeout override (as Cloud Run does)
    enforce_task_timeout: bool = False


@dataclass
class FakeExecution:
    name: str
    job: str
    request: run_v2.RunJobRequest
    plan: Plan
    operation: str
    created: float = field(default_factory=time.time)
    ended: float | None = None
    state: Outcome | None = None
    exit_code: int | None = None
    logs: list[tuple[str, str, float]] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    pumps: list[threading.Thread] = field(default_factory=list)
    operation_polls: int = 0


def _ts(at: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(at * 1e9))
    return stamp


class FakeCloudRun:
    """The fake service; ``start()`` returns the ``host:port`` to point a channel at."""

    def __init__(self, project: str = "proj", region: str = "europe-west1") -> None:
        self.project, self.region = project, region
        self.jobs: set[str] = set()
        self.executions: dict[str, FakeExecution] = {}
        self.calls: list[tuple[str, Any]] = []
        self.plans: list[Plan] = []
        self.default_plan = Plan()
        self._lock = threading.RLock()
        self._server: grpc.Server | None = None
        self.address = ""  # host:port once started

    # ---- set-up ----------------------------------------------------------------------------

    def add_job(self, name: str) -> str:
        full = f"projects/{self.project}/locations/{self.region}/jobs/{name}"
        self.jobs.add(full)
        return full

    def plan(self, **kwargs: Any) -> Plan:
        """Queue the plan of the next execution (later ones use ``default_plan``)."""
        plan = Plan(**kwargs)
        self.plans.append(plan)
        return plan

    def calls_of(self, method: str) -> list[Any]:
        return [request for name, request in self.calls if name == method]

    def start(self) -> str:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        unary = grpc.unary_unary_rpc_method_handler
        op_out = operations_pb2.Operation.SerializeToString
        handlers: dict[str, dict[str, grpc.RpcMethodHandler]] = {
            "google.cloud.run.v2.Jobs": {
                "RunJob": unary(self._run_job, run_v2.RunJobRequest.deserialize, op_out)
            },
            "google.longrunning.Operations": {
                "GetOperation": unary(
                    self._get_operation, operations_pb2.GetOperationRequest.FromString, op_out
                )
            },
            "google.cloud.run.v2.Executions": {
                "GetExecution": unary(
                    self._get_execution,
                    run_v2.GetExecutionRequest.deserialize,
                    run_v2.Execution.serialize,
                ),
                "CancelExecution": unary(
                    self._cancel_execution, run_v2.CancelExecutionRequest.deserialize, op_out
                ),
            },
            "google.cloud.run.v2.Tasks": {
                "ListTasks": unary(
                    self._list_tasks,
                    run_v2.ListTasksRequest.deserialize,
                    run_v2.ListTasksResponse.serialize,
                )
            },
        }
        server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(svc, methods)
                for svc, methods in handlers.items()
            ]
        )
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self._server = server
        self.address = f"127.0.0.1:{port}"
        return self.address

    def stop(self) -> None:
        with self._lock:
            for ex in self.executions.values():
                self._kill(ex)
        if self._server is not None:
            self._server.stop(grace=None).wait(5)

    # ---- simulation ------------------------------------------------------------------------

    def _advance(self, ex: FakeExecution) -> None:
        """Bring ``ex`` up to date with the clock (or with its local process)."""
        if ex.state is not None:
            return
        timeout: Any = ex.request.overrides.timeout  # proto-plus gives a timedelta
        limit = timeout.total_seconds() if timeout else None
        overdue = ex.plan.enforce_task_timeout and limit and time.time() - ex.created >= limit
        if ex.proc is not None:
            code = ex.proc.poll()
            if overdue and code is None:
                self._kill(ex)
                code = ex.proc.wait(5)
            if code is not None:
                for pump in ex.pumps:  # the process is gone: its last lines are in the pipes
                    pump.join(5)
                self._end(ex, "succeeded" if code == 0 else "failed", code)
            return
        if overdue:
            self._end(ex, "failed", 137)
        elif time.time() - ex.created >= ex.plan.duration_s:
            now = time.time()
            ex.logs += [("stdout", line, now) for line in ex.plan.stdout]
            ex.logs += [("stderr", line, now) for line in ex.plan.stderr]
            self._end(ex, ex.plan.outcome, ex.plan.exit_code)

    def _end(self, ex: FakeExecution, state: Outcome, code: int | None) -> None:
        ex.state, ex.exit_code, ex.ended = state, code, time.time()

    def _start_local(self, ex: FakeExecution) -> None:
        override = ex.request.overrides.container_overrides[0]
        argv = list(override.args)
        if argv[:1] == ["meridian-step"]:
            argv = [sys.executable, "-m", "meridian.stepexec", *argv[1:]]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MERIDIAN_")}
        env.update({var.name: var.value for var in override.env})
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO), env.get("PYTHONPATH")]))
        ex.proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        for stream, pipe in (("stdout", ex.proc.stdout), ("stderr", ex.proc.stderr)):
            pump = threading.Thread(target=self._pump, args=(ex, stream, pipe), daemon=True)
            pump.start()
            ex.pumps.append(pump)

    def _pump(self, ex: FakeExecution, stream: str, pipe: Any) -> None:
        # No lock: list.append is atomic, and _advance joins these threads while holding it.
        for raw in iter(pipe.readline, b""):
            ex.logs.append((stream, raw.decode("utf-8", "replace").rstrip("\n"), time.time()))
        pipe.close()

    def _kill(self, ex: FakeExecution) -> None:
        if ex.proc is not None and ex.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(ex.proc.pid, signal.SIGKILL)

    def _execution_msg(self, ex: FakeExecution) -> run_v2.Execution:
        self._advance(ex)
        count = ex.request.overrides.task_count or 1
        msg = run_v2.Execution(
            name=ex.name,
            job=ex.job.rsplit("/", 1)[-1],
            task_count=count,
            running_count=0 if ex.state else count,
        )
        msg.create_time = _ts(ex.created)
        if ex.state is not None and ex.ended is not None:
            msg.completion_time = _ts(ex.ended)
            reason = run_v2.Condition.ExecutionReason
            condition: Any = run_v2.Condition(type_="Completed")  # proto-plus enums take ints
            if ex.state == "succeeded":
                msg.succeeded_count = count
                condition.state = run_v2.Condition.State.CONDITION_SUCCEEDED
            elif ex.state == "failed":
                msg.failed_count = 1
                condition.state = run_v2.Condition.State.CONDITION_FAILED
                condition.execution_reason = reason.NON_ZERO_EXIT_CODE
                condition.message = f"Task {ex.name}-task0 failed with exit code {ex.exit_code}."
            else:
                msg.cancelled_count = count
                condition.state = run_v2.Condition.State.CONDITION_FAILED
                condition.execution_reason = reason.CANCELLED
                condition.message = "The execution was cancelled."
            msg.conditions = [condition]
        return msg

    def _operation(self, ex: FakeExecution) -> operations_pb2.Operation:
        op = operations_pb2.Operation(name=ex.operation)
        execution = run_v2.Execution.pb(self._execution_msg(ex))
        if ex.operation_polls >= ex.plan.metadata_after_polls:
            op.metadata.Pack(execution)
        if ex.state is not None:
            op.done = True
            response = any_pb2.Any()
            response.Pack(execution)
            op.response.CopyFrom(response)
        return op

    def _find(self, name: str, context: grpc.ServicerContext) -> FakeExecution:
        ex = self.executions.get(name)
        if ex is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Resource '{name}' was not found")
        return ex

    # ---- handlers --------------------------------------------------------------------------

    def _run_job(
        self, request: run_v2.RunJobRequest, context: grpc.ServicerContext
    ) -> operations_pb2.Operation:
        with self._lock:
            self.calls.append(("RunJob", request))
            if request.name not in self.jobs:
                context.abort(
                    grpc.StatusCode.NOT_FOUND,
                    f"Resource '{request.name}' of kind 'JOB' in region '{self.region}' "
                    f"in project '{self.project}' does not exist.",
                )
            short = f"{request.name.rsplit('/', 1)[-1]}-{uuid.uuid4().hex[:5]}"
            plan = self.plans.pop(0) if self.plans else self.default_plan
            location = f"projects/{self.project}/locations/{self.region}"
            ex = FakeExecution(
                name=f"{request.name}/executions/{short}",
                job=request.name,
                request=request,
                plan=plan,
                operation=f"{location}/operations/{uuid.uuid4()}",
            )
            self.executions[ex.name] = ex
            if plan.run_locally:
                self._start_local(ex)
            return self._operation(ex)

    def _get_operation(
        self, request: operations_pb2.GetOperationRequest, context: grpc.ServicerContext
    ) -> operations_pb2.Operation:
        with self._lock:
            self.calls.append(("GetOperation", request))
            for ex in self.executions.values():
                if ex.operation == request.name:
                    ex.operation_polls += 1
                    return self._operation(ex)
            context.abort(grpc.StatusCode.NOT_FOUND, f"Operation '{request.name}' not found")

    def _get_execution(
        self, request: run_v2.GetExecutionRequest, context: grpc.ServicerContext
    ) -> run_v2.Execution:
        with self._lock:
            self.calls.append(("GetExecution", request))
            return self._execution_msg(self._find(request.name, context))

    def _cancel_execution(
        self, request: run_v2.CancelExecutionRequest, context: grpc.ServicerContext
    ) -> operations_pb2.Operation:
        with self._lock:
            self.calls.append(("CancelExecution", request))
            ex = self._find(request.name, context)
            self._advance(ex)
            if ex.state is not None:
                context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"Execution '{ex.name}' has already completed.",
                )
            self._kill(ex)
            self._end(ex, "cancelled", None)
            return self._operation(ex)

    def _list_tasks(
        self, request: run_v2.ListTasksRequest, context: grpc.ServicerContext
    ) -> run_v2.ListTasksResponse:
        with self._lock:
            self.calls.append(("ListTasks", request))
            ex = self._find(request.parent, context)
            self._advance(ex)
            tasks = []
            for index in range(ex.request.overrides.task_count or 1):
                task = run_v2.Task(name=f"{ex.name}/tasks/{ex.name.rsplit('/', 1)[-1]}-{index}")
                task.index = index
                task.execution = ex.name
                if ex.state in ("succeeded", "failed") and ex.exit_code is not None:
                    code = ex.exit_code if index == 0 else 0
                    task.last_attempt_result = run_v2.TaskAttemptResult(exit_code=code)
                tasks.append(task)
            return run_v2.ListTasksResponse(tasks=tasks)


class FakeLogSource:
    """A ``LogSource`` over the fake's captured lines: stands in for Cloud Logging."""

    def __init__(self, fake: FakeCloudRun, delay_s: float = 0.0) -> None:
        self.fake = fake
        self.delay_s = delay_s  # lines become visible this long after they were written
        self.reads: list[str] = []

    async def read(self, execution: str, after: str | None) -> Sequence[LogEntry]:
        self.reads.append(execution)
        start = int(after) + 1 if after is not None else 0
        visible_before = time.time() - self.delay_s
        with self.fake._lock:
            ex = self.fake.executions.get(execution)
            lines = list(ex.logs) if ex is not None else []
        entries = []
        for index, (stream, text, at) in enumerate(lines[start:], start):
            if at > visible_before:
                break  # keep order: never skip a line that is still "being ingested"
            kind: Literal["stdout", "stderr"] = "stderr" if stream == "stderr" else "stdout"
            entries.append(LogEntry(kind, text, int(at * 1000), str(index)))
        return entries
