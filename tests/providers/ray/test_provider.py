"""The ray provider (integration: a real local Ray head and its Job Submission API).

One head per module (``tests/providers/ray_head.py``), started with token authentication in a
child process and stopped with ``ray.shutdown()``. Every job really runs: exit codes, logs,
``stop_job``, timeouts and re-attaching are Ray's own behaviour, not a fake's. The head runs on
this machine, so the default shared-filesystem mode is exercised as well as ``upload_bundle``
(the bundle travels through Ray's package upload; the outcome through the job logs).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

pytest.importorskip("ray", reason="install meridian-orchestrator[ray]")

from providers.base import (
    ExecutionSpec,
    Handle,
    LogRecord,
    Outcome,
    Provider,
    ProviderError,
    ProviderOptionsError,
)
from providers.ray import RayProvider
from providers.testing import ProviderConformance, write_step_module
from tests.providers.ray_head import RayHead

pytestmark = pytest.mark.integration
T = TypeVar("T")

EXTRA_STEPS = """\
import os
import sys


def show_env(*names):
    return {name: os.environ.get(name) for name in names} | {"cwd": os.getcwd()}


def die(code):
    print("about to die", file=sys.stderr, flush=True)
    os._exit(code)
"""


@pytest.fixture(scope="module")
def ray_head() -> Iterator[RayHead]:
    head = RayHead.start()
    try:
        yield head
    finally:
        head.stop()


def _config(head: RayHead, **extra: Any) -> dict[str, Any]:
    return {
        "address": head.address,
        "headers": head.headers,
        "python": sys.executable,  # the cluster's `python` on PATH may lack meridian
        "poll_interval_s": 0.2,
        "kill_grace_s": 2.0,
        **extra,
    }


def _status(head: RayHead, handle: Handle) -> str:
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(head.address, headers=head.headers)
    return str(client.get_job_status(handle.data["submission_id"]).value)


class TestRayConformance(ProviderConformance):
    scenario_timeout_s = 45.0
    valid_options = (
        {},
        {"num_cpus": 0.5, "memory": 1024, "env": {"A": "b"}},
        {"command": ["true"], "num_gpus": 0, "resources": {}, "upload_bundle": False},
    )
    invalid_options = (
        {"command": "echo hi"},
        {"command": []},
        {"command": ["echo", 1]},
        {"num_cpus": -1},
        {"num_cpus": "2"},
        {"memory": 1.5},
        {"num_gpus": True},
        {"env": {"A": 1}},
        {"resources": {"TPU": "x"}},
        {"upload_bundle": "yes"},
    )

    @pytest.fixture
    def provider(self, ray_head: RayHead) -> Provider:
        return RayProvider(_config(ray_head))

    @pytest.fixture
    def head(self, ray_head: RayHead) -> RayHead:
        return ray_head

    async def assert_stopped(self, provider: Provider, handle: Handle) -> None:
        assert handle.resource_id == f"ray:{handle.data['submission_id']}"
        assert await asyncio.to_thread(_status, self._head, handle) == "STOPPED"

    @pytest.fixture(autouse=True)
    def _remember_head(self, ray_head: RayHead) -> None:
        self._head = ray_head

    def make_bundle(self, bundle_dir: Path) -> Path:
        write_step_module(bundle_dir)
        (bundle_dir / "ray_extra_steps.py").write_text(EXTRA_STEPS, encoding="utf-8")
        return bundle_dir

    # ---- Ray-specific checks -------------------------------------------------------------

    def _go(self, provider: Provider, fn: Callable[[], Awaitable[T]]) -> T:
        async def main() -> T:
            try:
                return await asyncio.wait_for(fn(), self.scenario_timeout_s)
            finally:
                await provider.close()

        return asyncio.run(main())

    def _spec(self, bundle: Path, function: str, *args: Any, **kw: Any) -> ExecutionSpec:
        spec = self.make_spec(bundle, function, list(args), **kw)
        if function in ("show_env", "die"):
            spec = dataclasses.replace(spec, module="ray_extra_steps")
        return spec

    def test_command_exit_codes_and_stderr(self, provider: Provider, bundle: Path) -> None:
        script = "import sys; print('to-out'); print('to-err', file=sys.stderr); sys.exit(3)"
        bad = self._spec(bundle, "x", options={"command": [sys.executable, "-c", script]})
        good = self._spec(bundle, "x", options={"command": ["true"]})

        async def scenario() -> tuple[Outcome, list[LogRecord], Outcome]:
            handle = await provider.submit(bad)
            records = [r async for r in provider.logs(handle)]
            return (
                await provider.wait(handle),
                records,
                await provider.wait(await provider.submit(good)),
            )

        failed, records, ok = self._go(provider, scenario)
        assert failed.state == "failed" and failed.exit_code == 3
        assert failed.error is not None and failed.error.error_class == "transient"
        assert "exit code 3" in failed.error.message and "to-err" in failed.error.message
        assert ("stdout", "to-out") in [(r.stream, r.text) for r in records]
        assert ("stderr", "to-err") in [(r.stream, r.text) for r in records]
        assert ok.state == "succeeded" and ok.exit_code == 0 and ok.result_json == "null"

    def test_step_dying_without_outcome_is_transient(
        self, provider: Provider, bundle: Path
    ) -> None:
        spec = self._spec(bundle, "die", 7)
        outcome = self._go(provider, lambda: _submit_wait(provider, spec))
        assert outcome.state == "failed" and outcome.exit_code == 7
        assert outcome.error is not None and outcome.error.error_class == "transient"
        assert "JOB_ENTRYPOINT_COMMAND_ERROR" in outcome.error.message
        assert "about to die" in outcome.error.message  # Ray's own message with the log tail

    def test_env_metadata_and_resources(
        self, provider: Provider, bundle: Path, head: RayHead
    ) -> None:
        names = ("MERIDIAN_ATTEMPT_ID", "MERIDIAN_FLOW_RUN_ID", "MERIDIAN_STEP_KEY", "A")
        options = {"env": {"A": "from-option"}, "num_cpus": 1, "memory": 10_000_000}
        spec = self._spec(bundle, "show_env", *names, options=options)

        async def scenario() -> tuple[Handle, Outcome]:
            handle = await provider.submit(spec)
            return handle, await provider.wait(handle)

        handle, outcome = self._go(provider, scenario)
        assert outcome.state == "succeeded", outcome
        env = json.loads(outcome.result_json or "null")
        assert env["MERIDIAN_ATTEMPT_ID"] == spec.attempt_id
        assert env["MERIDIAN_FLOW_RUN_ID"] == spec.flow_run_id
        assert env["MERIDIAN_STEP_KEY"] == spec.step_key and env["A"] == "from-option"
        assert handle.resource_id == f"ray:meridian-{spec.attempt_id}"
        from ray.job_submission import JobSubmissionClient

        info = JobSubmissionClient(head.address, headers=head.headers).get_job_info(
            f"meridian-{spec.attempt_id}"
        )
        assert info.metadata is not None
        assert info.metadata["meridian_attempt_id"] == spec.attempt_id
        assert info.metadata["meridian_step_run_id"] == spec.step_run_id

    def test_resources_reach_the_scheduler_and_pending_is_not_timed(
        self, provider: Provider, bundle: Path, head: RayHead
    ) -> None:
        # The head has 2 CPUs: a job asking for 3 stays PENDING, which proves the request got
        # there; the step's timeout counts from RUNNING, so it does not fire while queued.
        spec = self._spec(bundle, "add", 1, 1, timeout_s=0.5, options={"num_cpus": 3})

        async def scenario() -> tuple[str, bool, Outcome]:
            handle = await provider.submit(spec)
            waiting = asyncio.create_task(provider.wait(handle))
            await asyncio.sleep(2.5)
            status = await asyncio.to_thread(_status, head, handle)
            still_waiting = not waiting.done()
            await provider.cancel(handle, 1.0)
            outcome = await waiting
            # logs() ends too (bounded by the scenario), although Ray keeps the job PENDING
            async for _ in provider.logs(handle):
                pass
            return status, still_waiting, outcome

        status, still_waiting, outcome = self._go(provider, scenario)
        assert status == "PENDING" and still_waiting
        assert outcome.state == "cancelled", outcome
        assert outcome.error is not None and "before its Ray job started" in outcome.error.message

    def test_upload_bundle_returns_result_through_logs(
        self, provider: Provider, bundle: Path
    ) -> None:
        spec = self._spec(bundle, "show_env", "A", options={"upload_bundle": True})
        outcome = self._go(provider, lambda: _submit_wait(provider, spec))
        assert outcome.state == "succeeded", outcome
        cwd = json.loads(outcome.result_json or "null")["cwd"]
        assert Path(cwd).resolve() != bundle.resolve()  # runs in Ray's unpacked copy
        assert not (spec.work_dir / "outcome.json").exists()  # the outcome came from the logs

    def test_submit_is_idempotent_per_attempt(self, provider: Provider, bundle: Path) -> None:
        spec = self._spec(bundle, "add", 1, 2)

        async def scenario() -> tuple[Handle, Handle, Outcome]:
            first = await provider.submit(spec)
            second = await provider.submit(spec)  # e.g. the agent crashed before saving it
            return first, second, await provider.wait(second)

        first, second, outcome = self._go(provider, scenario)
        assert first.resource_id == second.resource_id
        assert outcome.state == "succeeded" and outcome.result_json == "3"

    def test_recover_unknown_and_finished_jobs(self, provider: Provider, bundle: Path) -> None:
        spec = self._spec(bundle, "add", 2, 2)

        async def scenario() -> tuple[bool, bool, Outcome]:
            handle = await provider.submit(spec)
            await provider.wait(handle)
            fresh = RayProvider(provider.config)
            finished = await fresh.recover(Handle.from_json(handle.to_json()))
            unknown = Handle(
                "ray",
                "ray:meridian-nope",
                {**handle.data, "submission_id": f"meridian-{uuid.uuid4().hex}"},
            )
            (spec.work_dir / "outcome.json").rename(spec.work_dir / "gone.json")
            lost = await fresh.recover(unknown)
            outcome = await fresh.wait(unknown)
            await fresh.close()
            return finished, lost, outcome

        finished, lost, outcome = self._go(provider, scenario)
        assert finished is True and lost is False
        assert outcome.error is not None and outcome.error.error_class == "infrastructure"
        assert "no longer known" in outcome.error.message

    def test_unreachable_address_is_infrastructure(
        self, provider: Provider, bundle: Path, head: RayHead
    ) -> None:
        dead = RayProvider(_config(head, address="http://127.0.0.1:9", poll_interval_s=0.05))
        spec = self._spec(bundle, "add", 1, 1)

        async def scenario() -> Outcome:
            with pytest.raises(ProviderError, match=r"127\.0\.0\.1:9"):
                await dead.submit(spec)
            handle = await provider.submit(spec)
            return await dead.wait(handle)

        outcome = self._go(provider, scenario)
        assert outcome.state == "failed" and outcome.error is not None
        assert outcome.error.error_class == "infrastructure"
        assert "127.0.0.1:9" in outcome.error.message

    def test_wrong_token_is_rejected_with_rays_message(self, bundle: Path, head: RayHead) -> None:
        bad = RayProvider(_config(head, headers={"Authorization": "Bearer wrong"}))
        spec = self._spec(bundle, "add", 1, 1)
        with pytest.raises(ProviderError, match="Authentication"):
            self._go(bad, lambda: bad.submit(spec))

    def test_missing_sdk_says_which_extra(
        self, bundle: Path, head: RayHead, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setitem(sys.modules, "ray.job_submission", None)  # import now fails
        provider = RayProvider(_config(head))  # constructing needs no SDK
        spec = self._spec(bundle, "add", 1, 1)
        with pytest.raises(ProviderError, match=r"install meridian-orchestrator\[ray\]"):
            self._go(provider, lambda: provider.submit(spec))

    def test_invalid_config_rejected(self) -> None:
        for config in (
            {"no_such_key": 1},
            {"address": ""},
            {"headers": {"A": 1}},
            {"poll_interval_s": 0},
            {"kill_grace_s": "5"},
            {"verify": 3},
        ):
            with pytest.raises(ProviderError):
                RayProvider(config)
        with pytest.raises(ProviderOptionsError, match="command"):
            RayProvider({}).validate_options({"command": "echo"})


async def _submit_wait(provider: Provider, spec: ExecutionSpec) -> Outcome:
    return await provider.wait(await provider.submit(spec))
