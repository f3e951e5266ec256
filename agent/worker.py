"""Turning actions from the control plane into runners, one asyncio task per attempt.

The worker decides whether this agent takes an assignment (capacity, draining, provider
offered), routes cancels and decisions to the runner holding the attempt and token, and tracks
what is held for Hello and heartbeats. It never runs a step itself (docs/architecture.md,
"Conventions").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Mapping
from typing import Any

from agent.actions import (
    Action,
    AssignAction,
    Assignment,
    AssignRunnerAction,
    CancelAction,
    CancelRunnerAction,
    DecisionAction,
    DeleteResultsAction,
    DrainAction,
    ServeResultAction,
    SweepResultsAction,
    UnknownAction,
)
from agent.flowrunners import FlowRunners
from agent.handles import StoredHandle
from agent.reports import AttemptFinished, HeldAttempt, infrastructure_failure
from agent.results.housekeeping import ResultHousekeeper
from agent.runner import Runner, RunnerContext
from agent.sealing import AttemptSeal
from agent.transfers import ResultServer
from meridian.core.kinds import ASSIGNMENT_REFUSED
from providers.base import Handle, Provider

log = logging.getLogger("meridian.agent.worker")

# How long a runner cancelled at shutdown has to stop its infrastructure and report.
SHUTDOWN_CANCEL_GRACE_S = 5.0


class Worker:
    """Holds the runners of this agent's attempts."""

    def __init__(
        self, providers: Mapping[str, Provider], ctx: RunnerContext, capacity: int
    ) -> None:
        self._providers = dict(providers)
        self._ctx = ctx
        self._capacity = capacity
        self._runners: dict[str, tuple[Runner, asyncio.Task[None]]] = {}
        self._detached: set[asyncio.Task[None]] = set()  # rejected runners finishing up
        self._reports: set[asyncio.Task[Any]] = set()  # refusals being journaled
        self.draining = False
        # Answers the control plane's result-store sweeps and deletions; set once the
        # connection it answers on exists (``Agent._start``).
        self.housekeeper: ResultHousekeeper | None = None
        # Pushes stored results for transfers to other environments (``Agent._start``).
        self.result_server: ResultServer | None = None
        # Hosted flow runners (decision 0018), when the agent offers runner slots.
        self.flow_runners: FlowRunners | None = None

    @property
    def in_use(self) -> int:
        # A slot frees when the attempt's final report is journaled, as the control plane
        # frees it when that report arrives: the runner's clean-up after it (deleting
        # result files) must not refuse the next assignment the control plane sends at once.
        return sum(1 for runner, _ in self._runners.values() if not runner.finished)

    def held_attempts(self) -> tuple[HeldAttempt, ...]:
        return tuple(HeldAttempt(r.attempt_id, r.fencing_token) for r, _ in self._runners.values())

    def handle(self, action: Action) -> None:
        """Apply one action from the control plane."""
        if isinstance(action, AssignAction):
            for assignment in action.assignments:
                self._assign(assignment)
        elif isinstance(action, CancelAction):
            runner = self._runner(action.attempt_id, action.fencing_token)
            if runner is not None:
                runner.cancel(action.reason, action.grace_s)
        elif isinstance(action, DecisionAction):
            for decision in action.decisions:
                runner = self._runner(decision.attempt_id, decision.fencing_token)
                if runner is not None:
                    runner.decide(decision)
                    if decision.verdict == "reject":
                        self._release(decision.attempt_id)
        elif isinstance(action, DrainAction):
            log.info("control plane asked this agent to drain: %s", action.reason)
            self.draining = True
        elif isinstance(action, SweepResultsAction | DeleteResultsAction):
            if self.housekeeper is not None:
                self.housekeeper.handle(action)
        elif isinstance(action, ServeResultAction):
            if self.result_server is not None:
                self.result_server.handle(action)
        elif isinstance(action, AssignRunnerAction | CancelRunnerAction):
            if self.flow_runners is not None:
                self.flow_runners.handle(action)
            else:
                log.warning("this agent offers no runner slots; ignoring %r", action)
        elif isinstance(action, UnknownAction):
            log.warning("ignoring control frame %r this agent does not understand", action.kind)

    def _assign(self, a: Assignment) -> None:
        if a.attempt_id in self._runners:
            # Redelivery after a reconnect: the runner already owns it.
            return
        refusal = self._refusal(a)
        if refusal is not None:
            failure = infrastructure_failure(refusal, ASSIGNMENT_REFUSED)
            self._report_soon(a.attempt_id, a.fencing_token, failure)
            return
        runner = Runner(a.attempt_id, a.fencing_token, self._providers[a.spec.provider], self._ctx)
        self._track(runner, runner.run(a))

    def _report_soon(self, attempt_id: str, token: int, body: AttemptFinished) -> None:
        """Journal ``body`` in the background (the caller is a synchronous frame handler)."""
        task = asyncio.ensure_future(self._ctx.reporter.report(attempt_id, token, body))
        self._reports.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._reports.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("could not journal the report of %s: %s", attempt_id, t.exception())

        task.add_done_callback(done)

    @property
    def degraded(self) -> str:
        health = self._ctx.health
        return health.degraded if health is not None else ""

    def _refusal(self, a: Assignment) -> str | None:
        if self.draining:
            return "agent is draining"
        if self.degraded:
            return f"agent is degraded ({self.degraded}) and takes no new work until it clears"
        if self.in_use >= self._capacity:
            return "agent at capacity"
        if a.spec.provider not in self._providers:
            offered = ", ".join(sorted(self._providers)) or "none"
            return f"provider {a.spec.provider!r} is not offered by this agent (offered: {offered})"
        return None

    def _track(self, runner: Runner, body: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(body)
        self._runners[runner.attempt_id] = (runner, task)

        def forget(_: asyncio.Task[None]) -> None:
            if self._runners.get(runner.attempt_id, (None, None))[1] is task:
                del self._runners[runner.attempt_id]
            if task.cancelled() or runner.finished or task.exception() is None:
                return
            # A runner task that died without its final report: the attempt must not stay
            # RUNNING with nobody watching it. Its handle (if any) stays for a restart.
            exc = task.exception()
            log.error("runner of attempt %s died: %r", runner.attempt_id, exc)
            message = f"the agent's runner for this attempt died: {type(exc).__name__}: {exc}"
            self._report_soon(
                runner.attempt_id, runner.fencing_token, infrastructure_failure(message)
            )

        task.add_done_callback(forget)

    def _release(self, attempt_id: str) -> None:
        # The control plane frees the slot as soon as it rejects and may assign the next
        # attempt in the very next frame; the runner's task only ends a loop turn later.
        _, task = self._runners.pop(attempt_id)
        self._detached.add(task)
        task.add_done_callback(self._detached.discard)

    def _runner(self, attempt_id: str, fencing_token: int) -> Runner | None:
        entry = self._runners.get(attempt_id)
        if entry is None or entry[0].fencing_token != fencing_token:
            return None  # finished already, or a stale token: not ours to act on
        return entry[0]

    async def recover(self, stored: list[StoredHandle]) -> None:
        """Re-attach to attempts whose handles survived an agent restart."""
        for item in stored:
            provider = self._providers.get(item.provider)
            handle = Handle.from_json(item.handle_json)
            attached = False
            if provider is not None:
                try:
                    attached = await provider.recover(handle)
                except NotImplementedError:
                    attached = False
                except Exception:
                    log.exception("recovering attempt %s failed", item.attempt_id)
            if attached and provider is not None:
                runner = Runner(item.attempt_id, item.fencing_token, provider, self._ctx)
                self._track(runner, runner.resume(handle, AttemptSeal.from_json(item.seal_json)))
                continue
            failure = infrastructure_failure("agent restarted and could not re-attach")
            await self._ctx.reporter.report(
                item.attempt_id, item.fencing_token, failure, remove_handle=True
            )

    async def drain(self, grace_s: float) -> None:
        """Stop taking work, let runners finish for ``grace_s``, then cancel the rest."""
        self.draining = True
        tasks = {task for _, task in self._runners.values()}
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=max(0.0, grace_s))
        if not pending:
            return
        for runner, task in list(self._runners.values()):
            if task in pending:
                runner.cancel("agent is shutting down", SHUTDOWN_CANCEL_GRACE_S)
        await asyncio.wait(pending, timeout=SHUTDOWN_CANCEL_GRACE_S + 5.0)

    async def abort(self) -> None:
        """Last resort at close: stop runner tasks; their handles stay for re-attach."""
        tasks = [task for _, task in self._runners.values()] + list(self._detached)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.housekeeper is not None:
            await self.housekeeper.close()
        if self.result_server is not None:
            await self.result_server.close()
        # Refusals being journaled finish (they are short) so none is lost at close.
        if self._reports:
            await asyncio.wait(set(self._reports), timeout=5.0)
