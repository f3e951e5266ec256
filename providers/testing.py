"""The provider conformance suite: behaviour every provider must show, whatever it runs on.

Subclass ``ProviderConformance`` in a test module (name it ``Test...``) and supply a
``provider`` fixture; pytest then runs every check below against that provider::

    class TestProcessConformance(ProviderConformance):
        @pytest.fixture
        def provider(self) -> Provider:
            return ProcessProvider({"kill_grace_s": 1.0})

The suite writes its own small step module (plain functions, no SDK) into a temporary bundle
dir. Class attributes tune it to the provider: whether steps see this machine's files
(``shares_filesystem``), whether they hand results back as files in the attempt's directory
and read the input files the agent materialized (``returns_result_files``), which options are
valid or invalid, and how long a scenario may take. Checks that need a capability the provider
does not declare are skipped, never passed.

Results that stay at their site (docs/results.md): under a ``ResultPolicy`` a JSON result of at
least ``inline_threshold`` bytes, or any result with ``by_reference``, must come back as
``Outcome.result_file`` whose file holds exactly the size and sha256 the outcome names. A
provider whose results travel inline only (containers: the outcome comes back on the step's
output) must fail such a step with the executor's "inline only" error, never hand back a torn
or silently truncated result.

Deadlines: every wait of the suite (a step to start, a cleanup cancel, a whole scenario by
default) is bounded by ``BASE_DEADLINE_S`` seconds times the float in the environment variable
``MERIDIAN_TEST_TIME_SCALE`` (default 1; e.g. 3 on a slow or heavily shared CI machine). The
bounds exist only to stop a hung provider; a passing provider never comes near them.
``scenario_timeout_s`` of a subclass is scaled the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest

from meridian.core.resultref import ResultRef, ref_marker
from providers.base import (
    ExecutionSpec,
    Handle,
    InputFile,
    LogRecord,
    Outcome,
    Provider,
    ProviderOptionsError,
    ResultPolicy,
)

T = TypeVar("T")

TIME_SCALE_ENV = "MERIDIAN_TEST_TIME_SCALE"
#: The bound on any one wait of the suite, in seconds, before ``MERIDIAN_TEST_TIME_SCALE``.
BASE_DEADLINE_S = 60.0


def time_scale() -> float:
    """The factor in ``MERIDIAN_TEST_TIME_SCALE`` (default 1): how much slower this machine is."""
    raw = os.environ.get(TIME_SCALE_ENV, "").strip()
    if not raw:
        return 1.0
    try:
        scale = float(raw)
    except ValueError:
        scale = float("nan")
    if not scale > 0 or scale == float("inf"):
        raise ValueError(f"{TIME_SCALE_ENV} must be a number > 0, not {raw!r}")
    return scale


TIME_SCALE = time_scale()
#: ``BASE_DEADLINE_S`` scaled: how long the suite waits for a step to start or a cancel to end.
DEADLINE_S = BASE_DEADLINE_S * TIME_SCALE

STEP_MODULE = "meridian_conformance_steps"

STEP_SOURCE = '''\
"""Steps used by the provider conformance suite."""
import asyncio
import os
import sys
import time


class StepBoom(ValueError):
    pass


def add(a, b):
    return a + b


async def add_async(a, b):
    await asyncio.sleep(0)
    return {"sum": a + b}


def fail(message):
    raise StepBoom(message)


def fail_permanent(message, chained):
    from meridian.core.errors import Permanent

    if chained:
        raise ValueError(message) from Permanent("do not retry")
    raise Permanent(message)


def tick(path, seconds):
    """Append a byte to ``path`` every 50 ms for ``seconds``: proof of life."""
    deadline = time.monotonic() + seconds
    count = 0
    while time.monotonic() < deadline:
        if path:
            with open(path, "a") as fh:
                fh.write(".")
        count += 1
        time.sleep(0.05)
    return count


def chatter(n):
    for i in range(n):
        print(f"conformance-out {i}", flush=True)
        print(f"conformance-err {i}", file=sys.stderr, flush=True)
        time.sleep(0.01)
    return n


def slow_add(a, b, seconds):
    time.sleep(seconds)
    return a + b


def text_of(n):
    """A JSON string of exactly ``n + 2`` bytes."""
    return "r" * n


def length_of(value):
    return len(value)
'''

#: The inline threshold of the suite's result policy: small, so that results cross it cheaply.
RESULT_THRESHOLD = 1024
SMALL_POLICY = ResultPolicy(inline_threshold=RESULT_THRESHOLD)
#: What the executor says when a result must be stored but the provider returns results inline.
INLINE_ONLY = "returns results inline only"


def write_step_module(bundle_dir: Path) -> Path:
    """Write the suite's step module into ``bundle_dir`` and return the dir."""
    bundle_dir.mkdir(parents=True, exist_ok=True)
    (bundle_dir / f"{STEP_MODULE}.py").write_text(STEP_SOURCE, encoding="utf-8")
    return bundle_dir


def _result(outcome: Outcome) -> Any:
    assert outcome.state == "succeeded", f"expected success, got {outcome}"
    assert outcome.error is None
    assert outcome.result_json is not None
    return json.loads(outcome.result_json)


def _stored_result(outcome: Outcome, spec: ExecutionSpec) -> Any:
    """The value of a result handed back as a file, once the file is checked to be exactly
    what the outcome says (size, sha256, serializer): a torn file must not pass."""
    assert outcome.state == "succeeded", f"expected success, got {outcome}"
    assert outcome.error is None and outcome.result_json is None, outcome
    assert outcome.result_file is not None, f"expected a result file, got {outcome}"
    path = outcome.result_path(spec.work_dir)
    assert path is not None and path.is_file(), f"the result file {path} does not exist"
    data = path.read_bytes()  # the suite's results are a few KiB
    assert len(data) == outcome.result_file.size, "the result file's size is not the outcome's"
    assert hashlib.sha256(data).hexdigest() == outcome.result_file.sha256, "torn result file"
    assert outcome.result_file.serializer == "json"
    return json.loads(data)


def _assert_inline_only(outcome: Outcome, why: str) -> None:
    """The step failed, saying its result had to be stored and the provider cannot."""
    assert outcome.state == "failed", f"expected the inline-only failure, got {outcome}"
    assert outcome.result_json is None and outcome.result_file is None
    assert outcome.error is not None
    assert outcome.error.error_class == "permanent", outcome.error
    assert outcome.error.type == "builtins.TypeError", outcome.error
    assert INLINE_ONLY in outcome.error.message and why in outcome.error.message, outcome.error


class Session:
    """One scenario's provider(s) and attempts; whatever is left running is cancelled."""

    def __init__(self, provider: Provider) -> None:
        self.providers = [provider]
        self.handles: list[tuple[Provider, Handle]] = []

    async def submit(self, provider: Provider, spec: ExecutionSpec) -> Handle:
        handle = await provider.submit(spec)
        self.handles.append((provider, handle))
        return handle

    async def cleanup(self) -> None:
        for provider, handle in self.handles:
            if provider.capabilities.cancel:
                # Cleanup must not hide the assertion that failed.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(provider.cancel(handle, 0.0), DEADLINE_S)
        for provider in self.providers:
            await provider.close()


class ProviderConformance:
    """Checks every provider must pass. Subclasses supply the ``provider`` fixture."""

    #: the longest one scenario may take, in seconds before ``MERIDIAN_TEST_TIME_SCALE``
    scenario_timeout_s: ClassVar[float] = BASE_DEADLINE_S
    #: steps run where they can write files this test process reads (tick files prove liveness)
    shares_filesystem: ClassVar[bool] = True
    #: steps hand a result back as a file in the attempt's directory, which the agent reads,
    #: and read the input files the agent materialized (process, slurm's shared directory,
    #: ray without upload_bundle); False where results travel inline only, on the step's
    #: output (the container providers)
    returns_result_files: ClassVar[bool] = True
    #: grace the suite passes to cancel()
    cancel_grace_s: ClassVar[float] = 0.5
    #: a timeout must be reported within timeout + this many seconds
    #: per-step options the provider must accept / reject (besides an unknown key)
    valid_options: ClassVar[Sequence[Mapping[str, Any]]] = ({},)
    invalid_options: ClassVar[Sequence[Mapping[str, Any]]] = ()

    @pytest.fixture
    def provider(self) -> Provider:
        raise NotImplementedError("a ProviderConformance subclass must define a provider fixture")

    @pytest.fixture
    def bundle(self, tmp_path: Path) -> Path:
        return self.make_bundle(tmp_path / "bundle")

    # ---- hooks ---------------------------------------------------------------------------

    def make_bundle(self, bundle_dir: Path) -> Path:
        """Create the code bundle holding ``STEP_MODULE``; override to package it differently."""
        return write_step_module(bundle_dir)

    def new_provider(self, provider: Provider) -> Provider:
        """A fresh instance with the same config: what an agent builds after a restart."""
        return type(provider)(provider.config)

    async def assert_stopped(self, provider: Provider, handle: Handle) -> None:
        """Assert the attempt's infrastructure is gone; override with a provider-specific look."""

    # ---- helpers -------------------------------------------------------------------------

    def make_spec(
        self,
        bundle: Path,
        function: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        timeout_s: float | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> ExecutionSpec:
        attempt_id = uuid.uuid4().hex
        return ExecutionSpec(
            attempt_id=attempt_id,
            flow_run_id="conformance-run",
            step_run_id=f"step-{attempt_id[:8]}",
            step_key=f"{function}#1",
            step_name=function,
            attempt_number=1,
            module=STEP_MODULE,
            function=function,
            inputs_json=json.dumps({"args": list(args), "kwargs": dict(kwargs or {})}),
            bundle_dir=bundle,
            work_dir=bundle.parent / "work" / attempt_id,
            timeout_s=timeout_s,
            options=dict(options or {}),
        )

    def result_spec(
        self,
        bundle: Path,
        function: str,
        args: Sequence[Any] = (),
        *,
        policy: ResultPolicy = SMALL_POLICY,
        input_files: Mapping[str, InputFile] | None = None,
    ) -> ExecutionSpec:
        """``make_spec`` with a result policy and input files, as the agent sets them."""
        spec = self.make_spec(bundle, function, args)
        return dataclasses.replace(spec, result_policy=policy, input_files=dict(input_files or {}))

    def tick_file(self, bundle: Path) -> str | None:
        return (
            str(bundle.parent / f"ticks-{uuid.uuid4().hex[:8]}") if self.shares_filesystem else None
        )

    def run(self, provider: Provider, scenario: Callable[[Session], Awaitable[T]]) -> T:
        """Run one scenario in its own event loop, bounded in time, cleaning up after it."""

        async def main() -> T:
            session = Session(provider)
            try:
                limit = self.scenario_timeout_s * TIME_SCALE
                return await asyncio.wait_for(scenario(session), limit)
            finally:
                await session.cleanup()

        return asyncio.run(main())

    async def submit_and_wait(self, session: Session, spec: ExecutionSpec) -> Outcome:
        provider = session.providers[0]
        handle = await session.submit(provider, spec)
        return await provider.wait(handle)

    async def wait_for_ticks(self, path: str | None, timeout_s: float = DEADLINE_S) -> None:
        """Return once the tick step is demonstrably running (or after 0.5 s without files)."""
        if path is None:
            await asyncio.sleep(0.5)
            return
        deadline = time.monotonic() + timeout_s
        while not Path(path).exists() or Path(path).stat().st_size < 2:
            assert time.monotonic() < deadline, f"the tick step never started in {timeout_s:g} s"
            await asyncio.sleep(0.05)

    async def assert_ticks_stopped(self, path: str | None) -> None:
        if path is None:
            return
        tick_file = Path(path)
        # Killed before its first tick (a slow start under load) is stopped too, if it stays so.
        before = tick_file.stat().st_size if tick_file.exists() else -1
        await asyncio.sleep(0.4)  # the step ticks every 50 ms: 8 missed ticks means it is gone
        after = tick_file.stat().st_size if tick_file.exists() else -1
        assert after == before, "the step is still running"

    # ---- checks --------------------------------------------------------------------------

    def test_success_returns_result(self, provider: Provider, bundle: Path) -> None:
        spec = self.make_spec(bundle, "add", [2], {"b": 3})
        outcome = self.run(provider, lambda s: self.submit_and_wait(s, spec))
        assert _result(outcome) == 5
        assert outcome.exit_code in (0, None)

    def test_async_step_result(self, provider: Provider, bundle: Path) -> None:
        spec = self.make_spec(bundle, "add_async", [20, 22])
        outcome = self.run(provider, lambda s: self.submit_and_wait(s, spec))
        assert _result(outcome) == {"sum": 42}

    def test_exception_reports_class_and_type(self, provider: Provider, bundle: Path) -> None:
        spec = self.make_spec(bundle, "fail", ["it broke"])
        outcome = self.run(provider, lambda s: self.submit_and_wait(s, spec))
        assert outcome.state == "failed"
        assert outcome.result_json is None
        assert outcome.exit_code != 0
        assert outcome.error is not None
        assert outcome.error.error_class == "transient"
        assert outcome.error.type == f"{STEP_MODULE}.StepBoom"
        assert outcome.error.type_mro[:2] == (f"{STEP_MODULE}.StepBoom", "builtins.ValueError")
        assert "it broke" in outcome.error.message
        assert "StepBoom" in outcome.error.traceback

    @pytest.mark.parametrize("chained", [False, True], ids=["raised", "raised-from"])
    def test_permanent_error(self, provider: Provider, bundle: Path, chained: bool) -> None:
        spec = self.make_spec(bundle, "fail_permanent", ["bad input", chained])
        outcome = self.run(provider, lambda s: self.submit_and_wait(s, spec))
        assert outcome.state == "failed"
        assert outcome.error is not None
        assert outcome.error.error_class == "permanent"
        expected = "builtins.ValueError" if chained else "meridian.core.errors.Permanent"
        assert outcome.error.type == expected
        assert "bad input" in outcome.error.message

    def test_missing_function_is_permanent(self, provider: Provider, bundle: Path) -> None:
        spec = self.make_spec(bundle, "no_such_step")
        outcome = self.run(provider, lambda s: self.submit_and_wait(s, spec))
        assert outcome.state == "failed"
        assert outcome.error is not None
        assert outcome.error.error_class == "permanent"
        assert "no_such_step" in outcome.error.message

    def test_timeout_kills_and_reports_timed_out(self, provider: Provider, bundle: Path) -> None:
        ticks = self.tick_file(bundle)
        spec = self.make_spec(bundle, "tick", [ticks, 60.0], timeout_s=1.0)

        async def scenario(session: Session) -> float:
            started = time.monotonic()
            handle = await session.submit(provider, spec)
            outcome = await provider.wait(handle)
            elapsed = time.monotonic() - started
            assert outcome.state == "timed_out", outcome
            assert outcome.error is not None and outcome.error.error_class == "timeout"
            assert re.search(r"\b1(\.0+)? ?s", outcome.error.message), "message names the limit"
            await self.assert_ticks_stopped(ticks)
            await self.assert_stopped(provider, handle)
            return elapsed

        elapsed = self.run(provider, scenario)
        # Only the lower bound is a property (a timeout never fires early); how much later it
        # fires depends on the machine's load, so it is not asserted.
        assert elapsed >= 1.0

    def test_cancel_stops_the_step(self, provider: Provider, bundle: Path) -> None:
        if not provider.capabilities.cancel:
            pytest.skip("provider does not declare cancel")
        ticks = self.tick_file(bundle)
        spec = self.make_spec(bundle, "tick", [ticks, 60.0])

        async def scenario(session: Session) -> None:
            handle = await session.submit(provider, spec)
            await self.wait_for_ticks(ticks)
            await provider.cancel(handle, self.cancel_grace_s)
            outcome = await provider.wait(handle)
            assert outcome.state == "cancelled", outcome
            assert outcome.error is not None and outcome.error.error_class == "cancelled"
            await self.assert_ticks_stopped(ticks)
            await self.assert_stopped(provider, handle)
            await provider.cancel(handle, self.cancel_grace_s)  # idempotent
            assert (await provider.wait(handle)).state == "cancelled"

        self.run(provider, scenario)

    def test_logs_arrive_in_order(self, provider: Provider, bundle: Path) -> None:
        spec = self.make_spec(bundle, "chatter", [5])

        async def collect(records: AsyncIterator[LogRecord]) -> list[LogRecord]:
            return [r async for r in records]

        async def scenario(session: Session) -> tuple[Outcome, list[LogRecord]]:
            handle = await session.submit(provider, spec)
            logs = asyncio.create_task(collect(provider.logs(handle)))
            outcome = await provider.wait(handle)
            return outcome, await logs

        outcome, records = self.run(provider, scenario)
        assert _result(outcome) == 5
        out = [r.text for r in records if r.stream == "stdout" and "conformance-" in r.text]
        err = [r.text for r in records if r.stream == "stderr" and "conformance-" in r.text]
        assert out == [f"conformance-out {i}" for i in range(5)]
        assert err == [f"conformance-err {i}" for i in range(5)]
        assert all(r.at_unix_ms > 0 for r in records)

    def test_handle_round_trips_through_json(self, provider: Provider, bundle: Path) -> None:
        spec = self.make_spec(bundle, "add", [1, 1])

        async def scenario(session: Session) -> None:
            handle = await session.submit(provider, spec)
            assert Handle.from_json(handle.to_json()) == handle
            assert handle.provider == provider.type and handle.resource_id
            assert _result(await provider.wait(Handle.from_json(handle.to_json()))) == 2

        self.run(provider, scenario)

    def test_recover_after_restart(self, provider: Provider, bundle: Path) -> None:
        if not provider.capabilities.recover:
            pytest.skip("provider does not declare recover")
        # Long enough that the step is still running when the new instance re-attaches.
        spec = self.make_spec(bundle, "slow_add", [2, 3, 3.0])

        async def scenario(session: Session) -> Outcome:
            saved = (await session.submit(provider, spec)).to_json()
            await provider.close()  # the agent "restarts": only the persisted handle survives
            fresh = self.new_provider(provider)
            session.providers.append(fresh)
            handle = Handle.from_json(saved)
            session.handles.append((fresh, handle))
            assert await fresh.recover(handle), "a running attempt must be recoverable"
            return await fresh.wait(handle)

        assert _result(self.run(provider, scenario)) == 5

    def test_bad_options_rejected(self, provider: Provider, bundle: Path) -> None:
        with pytest.raises(ProviderOptionsError, match="no_such_option_xyz"):
            provider.validate_options({"no_such_option_xyz": 1})
        for options in self.invalid_options:
            with pytest.raises(ProviderOptionsError):
                provider.validate_options(options)
        for options in self.valid_options:
            provider.validate_options(options)
        spec = self.make_spec(bundle, "add", [1, 2], options={"no_such_option_xyz": 1})

        async def scenario(session: Session) -> None:
            with pytest.raises(ProviderOptionsError):
                await session.submit(provider, spec)

        self.run(provider, scenario)

    # ---- results that stay at their site -------------------------------------------------

    @pytest.mark.parametrize(
        "json_bytes", [RESULT_THRESHOLD - 1, RESULT_THRESHOLD, 4096], ids=["under", "at", "4KiB"]
    )
    def test_result_reaching_the_inline_threshold_is_a_file(
        self, provider: Provider, bundle: Path, json_bytes: int
    ) -> None:
        expected = "r" * (json_bytes - 2)  # a JSON string of exactly json_bytes bytes
        spec = self.result_spec(bundle, "text_of", [len(expected)])
        outcome = self.run(provider, lambda s: self.submit_and_wait(s, spec))
        if json_bytes < RESULT_THRESHOLD:
            assert _result(outcome) == expected and outcome.result_file is None
        elif self.returns_result_files:
            assert _stored_result(outcome, spec) == expected
        else:
            _assert_inline_only(outcome, f"inline threshold of {RESULT_THRESHOLD} bytes")

    def test_result_by_reference_is_a_file_however_small(
        self, provider: Provider, bundle: Path
    ) -> None:
        policy = dataclasses.replace(SMALL_POLICY, by_reference=True)
        spec = self.result_spec(bundle, "add", [2, 3], policy=policy)
        outcome = self.run(provider, lambda s: self.submit_and_wait(s, spec))
        if self.returns_result_files:
            assert _stored_result(outcome, spec) == 5
        else:
            _assert_inline_only(outcome, "names a result store")

    def test_input_reference_receives_the_loaded_value(
        self, provider: Provider, bundle: Path
    ) -> None:
        if not self.returns_result_files:
            pytest.skip("provider returns results inline only: its steps do not see input files")
        value = "i" * 3000
        data = json.dumps(value).encode()
        digest = hashlib.sha256(data).hexdigest()
        path = bundle.parent / f"input-{digest[:12]}.json"  # as the agent materializes one
        path.write_bytes(data)
        ref = ResultRef(
            environment="conformance",
            store="scratch",
            uri="file:///conformance/input.json",
            size=len(data),
            sha256=digest,
            serializer="json",
        )
        spec = self.result_spec(
            bundle,
            "length_of",
            [ref_marker(ref)],
            input_files={digest: InputFile(str(path), "json", len(data), digest)},
        )
        outcome = self.run(provider, lambda s: self.submit_and_wait(s, spec))
        assert _result(outcome) == len(value)
