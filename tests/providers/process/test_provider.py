"""The process provider (integration: real subprocesses, process groups and signals)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import pytest

from providers.base import Handle, LogRecord, Provider, ProviderError, ProviderOptionsError
from providers.process import ProcessProvider
from providers.process.proctree import read_stat
from providers.testing import ProviderConformance, Session, write_step_module

EXTRA_STEPS = '''\
import os
import signal
import subprocess
import sys
import time


def spawn_grandchild(pid_file, then):
    """Start a long-lived child, record its pid, then sleep, exit or return."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    with open(pid_file, "w") as fh:
        fh.write(str(child.pid))
    if then == "exit":
        os._exit(7)
    if then == "return":
        return child.pid
    time.sleep(60)


def ignore_sigterm(marker):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    open(marker, "w").close()
    time.sleep(60)


def die(code):
    print("about to die", file=sys.stderr, flush=True)
    if code < 0:
        os.kill(os.getpid(), -code)
    os._exit(code)


def show_env(*names):
    return {name: os.environ.get(name) for name in names} | {"cwd": os.getcwd()}


def long_line(n):
    print("x" * n, flush=True)
    print("after", flush=True)


def show_context():
    import meridian

    return meridian.context().to_dict()
'''

_FAST_CONFIG = {"kill_grace_s": 1.0}


def _gone(pid: int) -> bool:
    stat = read_stat(pid)
    return stat is None or stat.state in ("Z", "X")


async def _eventually_gone(pid: int, within_s: float = 3.0) -> bool:
    deadline = time.monotonic() + within_s
    while not _gone(pid):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def _read_pid(path: Path) -> int:
    for _ in range(500):
        if path.exists() and path.read_text():
            return int(path.read_text())
        await asyncio.sleep(0.02)
    raise AssertionError(f"{path} never written")


class TestProcessProvider(ProviderConformance):
    """The conformance suite, plus process-group, pid-reuse and crash behaviour, with steps in
    warm workers (the default); ``TestFreshProcesses`` runs all of it with the pool off."""

    mode: ClassVar[dict[str, Any]] = {}  # config keys that choose warm workers or fresh processes

    def make(self, config: dict[str, Any] | None = None) -> ProcessProvider:
        return ProcessProvider({**_FAST_CONFIG, **(config or {}), **self.mode})

    valid_options = ({}, {"env": {"A": "1"}}, {"cwd": "."})
    invalid_options = ({"env": {"A": 1}}, {"env": ["A=1"]}, {"env": {"A=B": "1"}}, {"cwd": ""})

    @pytest.fixture
    def provider(self) -> Provider:
        return self.make()

    async def assert_stopped(self, provider: Provider, handle: Handle) -> None:
        pid = int(handle.data["pid"])
        assert await _eventually_gone(pid), f"step process {pid} still alive"

    def make_bundle(self, bundle_dir: Path) -> Path:
        write_step_module(bundle_dir)
        (bundle_dir / "extra_steps.py").write_text(EXTRA_STEPS)
        return bundle_dir

    def extra_spec(self, bundle: Path, function: str, *args: Any, **kw: Any) -> Any:
        spec = self.make_spec(bundle, function, list(args), **kw)
        return type(spec)(**{**spec.__dict__, "module": "extra_steps"})

    @pytest.mark.parametrize("how", ["cancel", "timeout"])
    def test_group_killed_including_grandchild(self, bundle: Path, how: str) -> None:
        provider = self.make()
        pid_file = bundle.parent / "grandchild.pid"
        timeout = 1.0 if how == "timeout" else None
        spec = self.extra_spec(
            bundle, "spawn_grandchild", str(pid_file), "sleep", timeout_s=timeout
        )

        async def scenario(session: Session) -> None:
            handle = await session.submit(provider, spec)
            grandchild = await _read_pid(pid_file)
            assert not _gone(grandchild)
            if how == "cancel":
                await provider.cancel(handle, 0.5)
            outcome = await provider.wait(handle)
            assert outcome.state == ("cancelled" if how == "cancel" else "timed_out")
            assert await _eventually_gone(grandchild), "grandchild survived"
            assert await _eventually_gone(int(handle.data["pid"]))

        self.run(provider, scenario)

    @pytest.mark.parametrize("then", ["return", "exit"])
    def test_leftover_children_killed_after_step_ends(self, bundle: Path, then: str) -> None:
        provider = self.make()
        pid_file = bundle.parent / "grandchild.pid"
        spec = self.extra_spec(bundle, "spawn_grandchild", str(pid_file), then)

        async def scenario(session: Session) -> None:
            handle = await session.submit(provider, spec)
            outcome = await provider.wait(handle)
            if then == "return":
                assert outcome.state == "succeeded"
            else:
                assert outcome.error is not None
                assert outcome.error.error_class == "infrastructure"
                assert outcome.exit_code == 7
            assert await _eventually_gone(await _read_pid(pid_file)), "orphan left running"

        self.run(provider, scenario)

    def test_sigkill_after_grace_when_sigterm_ignored(self, bundle: Path) -> None:
        provider = self.make()
        marker = bundle.parent / "ignoring"
        spec = self.extra_spec(bundle, "ignore_sigterm", str(marker))

        async def scenario(session: Session) -> float:
            handle = await session.submit(provider, spec)
            await _read_pid_marker(marker)
            started = time.monotonic()
            await provider.cancel(handle, 0.3)
            elapsed = time.monotonic() - started
            assert _gone(int(handle.data["pid"]))
            outcome = await provider.wait(handle)
            assert outcome.state == "cancelled"
            assert outcome.exit_code == -signal.SIGKILL
            return elapsed

        assert 0.3 <= self.run(provider, scenario) < 2.0

    @pytest.mark.parametrize(
        ("code", "expected"),
        [(3, "exited with code 3 without"), (-9, "exited with code -9 (signal SIGKILL)")],
    )
    def test_missing_outcome_is_infrastructure(
        self, bundle: Path, code: int, expected: str
    ) -> None:
        provider = self.make()
        spec = self.extra_spec(bundle, "die", code)
        outcome = self.run(provider, lambda s: self.submit_and_wait(s, spec))
        assert outcome.state == "failed"
        assert outcome.exit_code == code
        assert outcome.error is not None
        assert outcome.error.error_class == "infrastructure"
        assert expected in outcome.error.message
        assert "about to die" in outcome.error.message

    def test_pid_reuse_guard(self, bundle: Path, tmp_path: Path) -> None:
        # An unrelated process holding "our" pid, as after a reboot or pid wrap-around.
        stranger = subprocess.Popen(["sleep", "30"], start_new_session=True)
        try:
            stat = read_stat(stranger.pid)
            assert stat is not None
            handle = Handle(
                provider="process",
                resource_id=f"pid:{stranger.pid}",
                data={
                    "pid": stranger.pid,
                    "pgid": stranger.pid,
                    "start_time": stat.start_time - 1,
                    "work_dir": str(tmp_path),
                    "timeout_s": None,
                    "started_at_ms": 0,
                },
            )
            provider = self.make()

            async def scenario(session: Session) -> None:
                assert not await provider.recover(handle)
                await provider.cancel(handle, 0.0)
                outcome = await provider.wait(handle)
                assert outcome.error is not None
                assert outcome.error.error_class == "infrastructure"
                assert [r async for r in provider.logs(handle)] == []

            self.run(provider, scenario)
            assert stranger.poll() is None, "the provider signalled a process that is not its own"
        finally:
            stranger.kill()
            stranger.wait()

    def test_recover_after_step_finished(self, bundle: Path) -> None:
        provider = self.make()
        spec = self.make_spec(bundle, "add", [4, 5])

        async def scenario(session: Session) -> None:
            handle = await session.submit(provider, spec)
            assert (await provider.wait(handle)).state == "succeeded"
            fresh = self.make()
            again = Handle.from_json(handle.to_json())
            assert await fresh.recover(again)
            outcome = await fresh.wait(again)
            assert outcome.result_json == "9" and outcome.exit_code == 0

        self.run(provider, scenario)

    def test_recover_of_vanished_step_is_false(self, bundle: Path) -> None:
        provider = self.make()
        spec = self.extra_spec(bundle, "die", -9)

        async def scenario(session: Session) -> None:
            handle = await session.submit(provider, spec)
            await provider.wait(handle)
            assert not await self.make().recover(handle)

        self.run(provider, scenario)

    def test_recovered_attempt_keeps_its_timeout(self, bundle: Path) -> None:
        provider = self.make()
        spec = self.make_spec(bundle, "tick", [None, 60.0], timeout_s=1.0)

        async def scenario(session: Session) -> None:
            saved = (await session.submit(provider, spec)).to_json()
            fresh = self.make()
            handle = Handle.from_json(saved)
            assert await fresh.recover(handle)
            outcome = await fresh.wait(handle)
            assert outcome.state == "timed_out"
            assert await _eventually_gone(int(handle.data["pid"]))

        self.run(provider, scenario)

    def test_environment_and_cwd(self, bundle: Path) -> None:
        provider = self.make({"env": {"FROM_CONFIG": "c", "BOTH": "config"}})
        (bundle / "sub").mkdir()
        names = ["FROM_CONFIG", "BOTH", "MERIDIAN_ATTEMPT_ID", "MERIDIAN_STEP_KEY", "PYTHONPATH"]
        spec = self.extra_spec(
            bundle, "show_env", *names, options={"env": {"BOTH": "option"}, "cwd": "sub"}
        )
        outcome = self.run(provider, lambda s: self.submit_and_wait(s, spec))
        env = json.loads(outcome.result_json or "null")
        assert env["FROM_CONFIG"] == "c" and env["BOTH"] == "option"
        assert env["MERIDIAN_ATTEMPT_ID"] == spec.attempt_id
        assert env["MERIDIAN_STEP_KEY"] == spec.step_key
        assert env["PYTHONPATH"].split(os.pathsep)[0] == str(bundle.resolve())
        assert env["cwd"] == str((bundle / "sub").resolve())

    def test_the_step_gets_the_run_context_of_its_spec(self, bundle: Path) -> None:
        from meridian.core.runcontext import RunContext

        provider = self.make()
        plain = self.extra_spec(bundle, "show_context")
        context = RunContext(
            run_id=plain.flow_run_id, step_key=plain.step_key, step_name="show_context",
            attempt_id=plain.attempt_id, attempt_number=3, environment="lab", agent_id="a-1",
        )  # fmt: skip
        spec = replace(plain, context=context)
        outcome = self.run(provider, lambda s: self.submit_and_wait(s, spec))
        assert RunContext.from_dict(json.loads(outcome.result_json or "null")) == context

    def test_missing_cwd_rejected_at_submit(self, bundle: Path) -> None:
        provider = self.make()
        spec = self.make_spec(bundle, "add", [1, 2], options={"cwd": "nowhere"})

        async def scenario(session: Session) -> None:
            with pytest.raises(ProviderOptionsError, match="nowhere"):
                await session.submit(provider, spec)

        self.run(provider, scenario)
        assert not (spec.work_dir / "stdout.log").exists()

    def test_long_log_lines_are_bounded(self, bundle: Path) -> None:
        provider = self.make()
        spec = self.extra_spec(bundle, "long_line", 40_000)

        async def scenario(session: Session) -> list[LogRecord]:
            handle = await session.submit(provider, spec)
            await provider.wait(handle)
            return [r async for r in provider.logs(handle)]

        records = self.run(provider, scenario)
        texts = [r.text for r in records if r.stream == "stdout"]
        assert [len(t) for t in texts] == [16384, 16384, 40_000 - 2 * 16384, 5]
        assert texts[-1] == "after"

    def test_bad_interpreter_is_a_provider_error(self, bundle: Path) -> None:
        provider = self.make({"python": str(bundle / "no-python")})
        spec = self.make_spec(bundle, "add", [1, 2])

        async def scenario(session: Session) -> None:
            with pytest.raises(ProviderError, match="no-python"):
                await session.submit(provider, spec)

        self.run(provider, scenario)

    def test_bad_config_rejected(self) -> None:
        with pytest.raises(ProviderError, match="pyhton"):
            ProcessProvider({"pyhton": sys.executable})
        with pytest.raises(ProviderError, match="kill_grace_s"):
            ProcessProvider({"kill_grace_s": "soon"})
        with pytest.raises(ProviderError, match="env"):
            ProcessProvider({"env": {"A": 1}})
        for key, bad in (("warm_workers", -1), ("worker_max_steps", 0), ("warm_workers", "4")):
            with pytest.raises(ProviderError, match=key):
                ProcessProvider({key: bad})
        with pytest.raises(ProviderError, match="worker_max_rss_mib"):
            ProcessProvider({"worker_max_rss_mib": 0})

    def test_unknown_isolation_rejected_at_submit(self, bundle: Path) -> None:
        provider = self.make()
        spec = replace(self.make_spec(bundle, "add", [1, 2]), isolation="fresh")

        async def scenario(session: Session) -> None:
            with pytest.raises(ProviderOptionsError, match="isolation"):
                await session.submit(provider, spec)

        self.run(provider, scenario)

    def test_foreign_handle_rejected(self) -> None:
        provider = ProcessProvider()
        handle = Handle(provider="slurm", resource_id="job:1")
        with pytest.raises(ProviderError, match="slurm"):
            asyncio.run(provider.recover(handle))


class TestFreshProcesses(TestProcessProvider):
    """Everything above with the warm pool off: each step is ``python -m meridian.stepexec``."""

    mode: ClassVar[dict[str, Any]] = {"warm_workers": 0}


async def _read_pid_marker(path: Path) -> None:
    for _ in range(500):
        if path.exists():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{path} never appeared")
