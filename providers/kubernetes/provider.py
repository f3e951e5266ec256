"""The ``kubernetes`` provider: one batch/v1 Job (``backoffLimit: 0``) per attempt.

The step runs as ``meridian-step --spec-env MERIDIAN_STEP_SPEC`` in the configured image (code
baked in at ``code_dir``) or as the ``command`` option. Its outcome comes back as the last
``::meridian-outcome::`` line of the pod log; exit code and reason (``OOMKilled``) from the pod's
container status. Everything is polled with the official ``kubernetes`` client (blocking, so
each call runs in a thread); there are no watches. Config: ``config``; the Job: ``manifest``;
API calls: ``client``; status reading and the attempt's local records: ``state`` (all in this
package); the log loop: ``providers.shared.logfollow``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar

from providers.base import (
    Capabilities,
    ExecutionSpec,
    Handle,
    LogRecord,
    Outcome,
    Provider,
    ProviderError,
)
from providers.kubernetes.client import JobsApi, KubernetesApiError, sdk, transient
from providers.kubernetes.config import OPTIONS_SCHEMA, KubernetesConfig, check_options
from providers.kubernetes.manifest import CONTAINER, build_job
from providers.kubernetes.state import (
    CONFIG_FAILURES,
    PULL_FAILURES,
    Attempt,
    conclude,
    infrastructure,
    job_condition,
    split_timestamp,
    stopped,
    waiting_reason,
)
from providers.shared.logfollow import LogSnapshot, follow_snapshots
from providers.shared.outcome import RESULT_MARKER

__all__ = ["KubernetesApiError", "KubernetesConfig", "KubernetesProvider"]

# An API server restart or etcd leader election: keep polling through it for this long.
_TRANSIENT_GRACE_S = 60.0


class KubernetesProvider(Provider):
    """Runs each attempt as a Kubernetes Job. Config: see ``KubernetesConfig``."""

    type: ClassVar[str] = "kubernetes"
    capabilities: ClassVar[Capabilities] = Capabilities(
        cancel=True, recover=True, streaming_logs=True, python_steps=True
    )
    options_schema: ClassVar[Mapping[str, Any]] = OPTIONS_SCHEMA

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        self.settings = KubernetesConfig.from_mapping(self.config)
        self.api = JobsApi(self.settings)

    def validate_options(self, options: Mapping[str, Any]) -> None:
        super().validate_options(options)
        check_options(options)

    async def _stop(self, a: Attempt, reason: str) -> None:
        """Record why, delete the Job with its pods and wait (bounded) until it is gone."""
        a.mark_ended(reason)
        await self.api.delete(a, self.settings.propagation_policy)
        # Foreground: the Job disappears only after its pods did, so "gone" means stopped.
        deadline = time.monotonic() + self.settings.kill_grace_s + 30.0
        while time.monotonic() < deadline and await self.api.get_job(a) is not None:
            await asyncio.sleep(min(self.settings.poll_interval_s, 0.5))

    # ---- verbs ---------------------------------------------------------------------------

    async def submit(self, spec: ExecutionSpec) -> Handle:
        self.validate_options(spec.options)
        manifest = build_job(spec, self.settings)
        work_dir = spec.work_dir.resolve()
        work_dir.mkdir(parents=True, exist_ok=True)
        ns, name = self.settings.namespace, manifest["metadata"]["name"]
        try:
            body = sdk().client.V1Job.from_dict(manifest)
        except ValueError as exc:  # pydantic's ValidationError: the client's own checks
            raise ProviderError(f"the Job manifest of {name!r} is invalid: {exc}") from exc
        created = await self.api.call(
            f"create Job {ns}/{name}",
            lambda b, _: b.create_namespaced_job(ns, body, _request_timeout=self.api.timeout),
        )
        data = {
            "namespace": ns,
            "name": name,
            "uid": created.metadata.uid,
            "work_dir": str(work_dir),
            "timeout_s": spec.timeout_s if spec.timeout_s and spec.timeout_s > 0 else None,
            "started_at_ms": int(time.time() * 1000),
            "python_step": not spec.options.get("command"),
        }
        return Handle(provider=self.type, resource_id=f"k8s:{ns}/{name}", data=data)

    async def wait(self, handle: Handle) -> Outcome:
        a = Attempt.of(handle)
        deadline = a.deadline()
        pull_stuck_since: float | None = None
        failing_since: float | None = None
        while (outcome := a.recorded()) is None:
            waiting: tuple[str, str] | None = None
            ended = a.ended_by()
            if ended:
                outcome = stopped(ended, a)
            else:
                try:
                    outcome, waiting = await self._check(a)
                    failing_since = None
                except KubernetesApiError as exc:
                    failing_since = failing_since or time.monotonic()
                    if not transient(exc) or time.monotonic() - failing_since > _TRANSIENT_GRACE_S:
                        outcome = infrastructure(str(exc))
            if outcome is None and deadline is not None and time.monotonic() >= deadline:
                await self._stop(a, "timed_out")
                outcome = stopped("timed_out", a)
            if outcome is None and waiting is not None and waiting[0] in CONFIG_FAILURES:
                outcome = infrastructure(f"container cannot start: {waiting[0]}: {waiting[1]}")
            if outcome is None and waiting is not None and waiting[0] in PULL_FAILURES:
                pull_stuck_since = pull_stuck_since or time.monotonic()
                if time.monotonic() - pull_stuck_since >= self.settings.image_pull_timeout_s:
                    outcome = infrastructure(f"image cannot be pulled: {waiting[0]}: {waiting[1]}")
            elif outcome is None:
                pull_stuck_since = None
            if outcome is not None:
                return await self._finish(a, outcome)
            await asyncio.sleep(self.settings.poll_interval_s)
        return outcome

    async def _check(self, a: Attempt) -> tuple[Outcome | None, tuple[str, str] | None]:
        """(outcome once the Job finished, the container's waiting reason while it has not)."""
        try:
            job = await self.api.read_job(a)
        except KubernetesApiError as exc:
            if exc.status != 404:
                raise
            ended = a.ended_by()  # cancel() may have deleted it between our checks
            gone = f"Job {a.namespace}/{a.name} was deleted before it ended: {exc}"
            return (stopped(ended, a) if ended else infrastructure(gone)), None
        if job.metadata.uid != a.uid:
            replaced = f"Job {a.namespace}/{a.name} was replaced (uid {job.metadata.uid})"
            return infrastructure(f"{replaced}; the attempt's Job (uid {a.uid}) is gone"), None
        condition = job_condition(job)
        pod = await self.api.pod(a)
        if condition is None:
            return None, waiting_reason(pod, CONTAINER)
        log = await self.api.pod_log(a, pod) if pod is not None else None
        outcome = conclude(a, condition, pod, log or "")
        a.record(outcome, log)
        return outcome, None

    async def _finish(self, a: Attempt, outcome: Outcome) -> Outcome:
        """Record the outcome once; stop a Job that will not end by itself; tidy up."""
        if a.recorded() is None:
            a.record(outcome, None)
        if outcome.error is not None and outcome.error.error_class == "infrastructure":
            await self._quiet_delete(a, self.settings.propagation_policy)
        elif self.settings.delete_after_completion:
            await self._quiet_delete(a, "Background")
        return outcome

    async def _quiet_delete(self, a: Attempt, policy: str) -> None:
        # Best effort: the outcome is already decided and recorded; a failed clean-up is left
        # to ttlSecondsAfterFinished rather than turned into a second failure.
        with contextlib.suppress(ProviderError):
            await self.api.delete(a, policy)

    async def cancel(self, handle: Handle, grace_s: float) -> None:
        # The pods' grace period is the manifest's terminationGracePeriodSeconds (config
        # kill_grace_s): deleting a Job cannot pass a grace period on to its pods.
        a = Attempt.of(handle)
        if a.ended_by() is not None:  # already being stopped: make sure the delete went out
            await self.api.delete(a, self.settings.propagation_policy)
            return
        if a.recorded() is not None:
            return  # it ended by itself; the finished Job stays for its TTL
        job = await self.api.get_job(a)
        if job is None or job_condition(job) is not None:
            return  # gone, or finished: wait() reports how it really ended
        await self._stop(a, "cancelled")

    async def recover(self, handle: Handle) -> bool:
        a = Attempt.of(handle)
        if a.recorded() is not None or a.ended_by() is not None:
            return True
        return await self.api.get_job(a) is not None

    async def logs(self, handle: Handle) -> AsyncIterator[LogRecord]:
        a = Attempt.of(handle)
        async for line in follow_snapshots(
            lambda: self._log_snapshot(a), self.settings.poll_interval_s
        ):
            at, text = split_timestamp(line)
            if not text.startswith(RESULT_MARKER):
                yield LogRecord("stdout", text, at)

    async def _log_snapshot(self, a: Attempt) -> LogSnapshot:
        """The pod log so far; a transient API error reads as "nothing yet, not ended"."""
        try:
            ended, log = await self._log_so_far(a)
        except KubernetesApiError as exc:
            if not transient(exc):
                raise
            return LogSnapshot(ended=False, text=None)  # a blip must not end the stream
        return LogSnapshot(ended=ended, text=log)

    async def _log_so_far(self, a: Attempt) -> tuple[bool, str | None]:
        """(whether the attempt has ended, its whole pod log so far if there is one)."""
        # Decide "ended" before reading so the last read covers everything written.
        job = None if a.recorded() or a.ended_by() else await self.api.get_job(a)
        ended = job is None or job_condition(job) is not None
        log = a.saved_log()
        if log is None and job is not None:
            pod = await self.api.pod(a)
            log = await self.api.pod_log(a, pod) if pod is not None else None
        return ended, log

    async def close(self) -> None:
        # Jobs are deliberately left running: a restarted agent re-attaches to them.
        await self.api.close()
