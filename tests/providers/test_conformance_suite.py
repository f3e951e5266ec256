"""The conformance suite itself: each check must fail against a provider that breaks its rule."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from providers.base import Handle, LogRecord, Outcome, Provider
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


class _Suite(ProviderConformance):
    scenario_timeout_s = 4.0  # broken providers may hang; give up quickly


BROKEN: list[tuple[type[Provider], Callable[[_Suite, Provider, Path], None]]] = [
    (_IgnoresTimeout, lambda s, p, b: s.test_timeout_kills_and_reports_timed_out(p, b)),
    (_CannotCancel, lambda s, p, b: s.test_cancel_stops_the_step(p, b)),
    (_Mute, lambda s, p, b: s.test_logs_arrive_in_order(p, b)),
    (_Forgetful, lambda s, p, b: s.test_recover_after_restart(p, b)),
    (_Lenient, lambda s, p, b: s.test_bad_options_rejected(p, b)),
    (_AllTransient, lambda s, p, b: s.test_permanent_error(p, b, True)),
]


@pytest.mark.parametrize(("broken", "check"), BROKEN, ids=[b.__name__ for b, _ in BROKEN])
def test_check_fails_against_broken_provider(
    broken: type[Provider], check: Callable[[_Suite, Provider, Path], None], tmp_path: Path
) -> None:
    bundle = write_step_module(tmp_path / "bundle")
    with pytest.raises((AssertionError, TimeoutError, pytest.fail.Exception)):
        check(_Suite(), broken({"kill_grace_s": 0.5}), bundle)
