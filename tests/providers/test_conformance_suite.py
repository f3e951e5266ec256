"""The conformance suite itself: each check must fail against a provider that breaks its rule."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from providers.base import ExecutionSpec, Handle, LogRecord, Outcome, Provider
from providers.process import ProcessProvider
from providers.testing import ProviderConformance, write_step_module


class _IgnoresTimeout(ProcessProvider):
    async def wait(self, handle: Handle) -> Outcome:
        data = {**handle.data, "timeout_s": None}
        return await super().wait(Handle(handle.provider, handle.resource_id, data))


class _CannotCancel(ProcessProvider):
    """Ignores the suite's cancel; the suite's cleanup (a second cancel) still works."""

    ignored = False

    async def cancel(self, handle: Handle, grace_s: float) -> None:
        if self.ignored:
            await super().cancel(handle, grace_s)
        self.ignored = True


class _Mute(ProcessProvider):
    async def logs(self, handle: Handle) -> AsyncIterator[LogRecord]:
        for _ in ():
            yield LogRecord("stdout", "", 0)


class _Forgetful(ProcessProvider):
    async def recover(self, handle: Handle) -> bool:
        return False


class _Lenient(ProcessProvider):
    def validate_options(self, options: Mapping[str, Any]) -> None:
        return None


class _AllTransient(ProcessProvider):
    async def wait(self, handle: Handle) -> Outcome:
        outcome = await super().wait(handle)
        if outcome.error is not None and outcome.error.error_class == "permanent":
            return replace(outcome, error=replace(outcome.error, error_class="transient"))
        return outcome


class _TearsResultFiles(ProcessProvider):
    """Hands back a result file cut short (its outcome still names the whole file)."""

    async def wait(self, handle: Handle) -> Outcome:
        outcome = await super().wait(handle)
        path = outcome.result_path(Path(handle.data["work_dir"]))
        if path is not None:
            path.write_bytes(path.read_bytes()[:-1])
        return outcome


class _IgnoresResultPolicy(ProcessProvider):
    """Does not pass the result policy on: every result comes back inline."""

    async def submit(self, spec: ExecutionSpec) -> Handle:
        return await super().submit(replace(spec, result_policy=None))


class _IgnoresInputFiles(ProcessProvider):
    async def submit(self, spec: ExecutionSpec) -> Handle:
        return await super().submit(replace(spec, input_files={}))


class _HandsBackFiles(ProcessProvider):
    """A provider handing back result files, run by a suite that declares inline only."""


class _Suite(ProviderConformance):
    scenario_timeout_s = 4.0  # broken providers may hang; give up quickly


class _InlineOnlySuite(_Suite):
    """Declares results inline only: a provider that hands back result files breaks that."""

    returns_result_files = False


BROKEN: list[tuple[type[Provider], Callable[[_Suite, Provider, Path], None]]] = [
    (_IgnoresTimeout, lambda s, p, b: s.test_timeout_kills_and_reports_timed_out(p, b)),
    (_CannotCancel, lambda s, p, b: s.test_cancel_stops_the_step(p, b)),
    (_Mute, lambda s, p, b: s.test_logs_arrive_in_order(p, b)),
    (_Forgetful, lambda s, p, b: s.test_recover_after_restart(p, b)),
    (_Lenient, lambda s, p, b: s.test_bad_options_rejected(p, b)),
    (_AllTransient, lambda s, p, b: s.test_permanent_error(p, b, True)),
    (
        _TearsResultFiles,
        lambda s, p, b: s.test_result_reaching_the_inline_threshold_is_a_file(p, b, 4096),
    ),
    (_TearsResultFiles, lambda s, p, b: s.test_result_by_reference_is_a_file_however_small(p, b)),
    (
        _IgnoresResultPolicy,
        lambda s, p, b: s.test_result_reaching_the_inline_threshold_is_a_file(p, b, 1024),
    ),
    (_IgnoresInputFiles, lambda s, p, b: s.test_input_reference_receives_the_loaded_value(p, b)),
    (
        _HandsBackFiles,
        lambda s, p, b: _InlineOnlySuite().test_result_reaching_the_inline_threshold_is_a_file(
            p, b, 4096
        ),
    ),
]


@pytest.mark.parametrize(("broken", "check"), BROKEN, ids=[b.__name__ for b, _ in BROKEN])
def test_check_fails_against_broken_provider(
    broken: type[Provider], check: Callable[[_Suite, Provider, Path], None], tmp_path: Path
) -> None:
    bundle = write_step_module(tmp_path / "bundle")
    with pytest.raises((AssertionError, TimeoutError, pytest.fail.Exception)):
        check(_Suite(), broken({"kill_grace_s": 0.5}), bundle)
