"""The site agent: configuration and lifecycle (docs/architecture.md, "Conventions").

``Agent.run()`` loads the enrolled identity, locks the data dir (``agent.datadirlock``: a
second agent on it refuses to start), opens the journal and handle store, loads the
configured providers, re-attaches to attempts that survived a restart and keeps the connection
worker running until ``shutdown(grace)``, or until the control plane refuses the agent for a
reason reconnecting cannot fix (``AgentRefused``, raised from ``run()``). Beside the connection
run the health probe (degraded states, ``agent.health``), the event-loop watchdog and one
retention sweeper per result store (``agent.results.retention``). The result stores
(``[result_stores.NAME]``) are built once, before anything else opens: a store that cannot be
opened stops the agent with an error naming its table.
Shutdown drains in a fixed order: stop accepting and
say so, let running steps finish up to ``grace``, cancel the rest, flush reports, close.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import logging
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from agent import convert
from agent.bundles import BundleCache, RpcBundleSource
from agent.connection import Connection
from agent.datadirlock import DataDirLock
from agent.endpoint import AgentEndpoint
from agent.flowrunners import FlowRunners
from agent.handles import HandleStore
from agent.health import Health, StallMeter, loop_watchdog
from agent.identity import certificate_not_after, load_identity
from agent.journal import Journal
from agent.limits import AgentLimits
from agent.metrics import AgentGauges, AgentMetrics, ProviderErrors
from agent.reporter import Reporter
from agent.reports import HeartbeatInfo, HeldAttempt, HelloInfo, ProviderInfo
from agent.results import ResultStore, ResultStoresConfig
from agent.results.housekeeping import ResultHousekeeper
from agent.results.registry import build_stores
from agent.results.retention import retention_tasks
from agent.rotation import CertificateRotator
from agent.runner import RunnerContext
from agent.secrets import SecretStore
from agent.transfers import ResultFetcher, ResultServer
from agent.workdirs import remove_stale_work_dirs
from agent.worker import Worker
from meridian.core.sealing import KeyRing
from providers.base import Provider

log = logging.getLogger("meridian.agent")

ProviderLoader = Callable[[str, Mapping[str, Any]], Provider]

MAX_BUNDLE_BYTES = 64 * 1024 * 1024
# After draining, how long to wait for the control plane to ack the last reports.
FLUSH_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class AgentConfig:
    control_plane: str
    data_dir: Path
    ca_file: Path | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    providers: Sequence[str] = ("process",)
    provider_config: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    capacity: int = 4
    drain_grace_s: float = 30.0
    reconnect_max_backoff_s: float = 10.0
    # Secret resolver settings by scheme, e.g. {"aws-sm": {"region": "eu-west-1"}};
    # see docs/secrets.md. Checked when the agent starts.
    secrets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # Sealing keys of the key groups this agent's environment belongs to (docs/security.md).
    seal_keys: KeyRing = field(default_factory=KeyRing)
    # Bounds on results, errors and logs, disk and loop thresholds (docs/reliability.md).
    limits: AgentLimits = field(default_factory=AgentLimits)
    # HOST:PORT of the agent's own Prometheus endpoint (agent/metrics.py); "" = off.
    metrics_listen: str = ""
    # The site's result stores, validated ([result_stores.NAME], docs/results.md), and how
    # this agent takes results of other environments ([transfers], ``.transfers``).
    result_stores: ResultStoresConfig = field(default_factory=lambda: ResultStoresConfig({}, None))
    # Hosted flow runners (decision 0018): flow bodies this agent runs at once (0 = none).
    runner_slots: int = 0
    # Fork hosted runners from a process that imported the SDK once (decision 0018); off:
    # a fresh interpreter per run.
    runner_fork_server: bool = True


def _default_loader(provider_type: str, config: Mapping[str, Any]) -> Provider:
    from providers.registry import load_provider  # entry-point discovery, only when needed

    return load_provider(provider_type, config)


def _warn_if_expired(cert_pem: bytes, data_dir: Path) -> None:
    # Rotation keeps a connected agent's certificate fresh; one that was offline past its
    # expiry cannot connect any more and needs a new identity.
    not_after = certificate_not_after(cert_pem)
    if not_after is not None and not_after <= datetime.now(UTC):
        log.error(
            "the agent certificate in %s expired at %s; the control plane will refuse it. "
            "Enroll again with a new join token (`meridian agent enroll`)",
            data_dir,
            f"{not_after:%Y-%m-%d %H:%M:%S} UTC",
        )


def agent_version() -> str:
    try:
        return importlib.metadata.version("meridian-orchestrator")
    except importlib.metadata.PackageNotFoundError:
        return "0.1.0"


class Agent:
    """One site agent process: connects out, runs assigned attempts, reports back."""

    def __init__(self, config: AgentConfig, *, provider_loader: ProviderLoader | None = None):
        """``provider_loader`` replaces entry-point discovery (tests, embedding)."""
        self._config = config
        self._loader = provider_loader or _default_loader
        self._providers: dict[str, Provider] = {}
        self._journal: Journal | None = None
        self._handles: HandleStore | None = None
        self._reporter: Reporter | None = None
        self._endpoint: AgentEndpoint | None = None
        self._worker: Worker | None = None
        self._connection: Connection | None = None
        self._connection_task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._closed = asyncio.Event()
        self._stalls = StallMeter()
        self._running = False
        self._shutdown_task: asyncio.Task[None] | None = None
        self._health: Health | None = None
        self._background: list[asyncio.Task[None]] = []
        self._metrics: AgentMetrics | None = None
        self._result_stores: dict[str, ResultStore] = {}
        self._flow_runners: FlowRunners | None = None
        self._lock: DataDirLock | None = None
        self.metrics_address: tuple[str, int] | None = None

    @property
    def connected(self) -> bool:
        return self._connection is not None and self._connection.connected

    async def __aenter__(self) -> Agent:
        self._run_task = asyncio.ensure_future(self.run())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()
        await self._run_task

    async def run(self) -> None:
        """Connect (and reconnect) until ``shutdown()``; raises NotFound when not enrolled."""
        if self._stop.is_set() or self._running:
            return
        self._running = True
        try:
            await self._start()
            assert self._connection_task is not None
            stopping = asyncio.ensure_future(self._stop.wait())
            try:
                await asyncio.wait(
                    {stopping, self._connection_task}, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                stopping.cancel()
            task = self._connection_task
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]  # e.g. AgentRefused: exit with it
        finally:
            await self._close()
            self._closed.set()

    async def shutdown(self, grace: float | None = None) -> None:
        """Drain and stop; safe to call more than once and before or after ``run()``."""
        if self._shutdown_task is None:
            self._shutdown_task = asyncio.ensure_future(self._drain(grace))
        await asyncio.shield(self._shutdown_task)

    async def _start(self) -> None:
        cfg = self._config
        identity = load_identity(cfg.data_dir)
        # One agent per data dir, before anything opens (agent.datadirlock).
        self._lock = await asyncio.to_thread(DataDirLock.acquire, cfg.data_dir)
        _warn_if_expired(identity.cert_pem, cfg.data_dir)
        # Before anything opens: a bad secrets configuration must stop the agent at once.
        secrets = SecretStore.from_config(cfg.secrets)
        # So must a result store that cannot be opened (its error names the table).
        self._result_stores = await asyncio.to_thread(build_stores, cfg.result_stores)
        ca_pem = Path(cfg.ca_file).read_bytes() if cfg.ca_file else identity.ca_pem
        for provider_type in cfg.providers:
            config = cfg.provider_config.get(provider_type, {})
            if provider_type == "process" and "warm_workers" not in config:
                config = {**config, "warm_workers": cfg.capacity}  # one warm worker per slot
            self._providers[provider_type] = self._loader(provider_type, config)
        self._journal = await asyncio.to_thread(Journal, cfg.data_dir)
        self._handles = await asyncio.to_thread(HandleStore, cfg.data_dir)
        health = self._health = Health(cfg.data_dir, cfg.data_dir / "work", cfg.limits)
        await asyncio.to_thread(health.take_reserve)
        await asyncio.to_thread(health.probe)
        reporter = self._reporter = Reporter(self._journal, cfg.limits, health)
        self._endpoint = AgentEndpoint(
            cfg.control_plane,
            ca_pem=ca_pem,
            key_pem=identity.key_pem,
            cert_pem=identity.cert_pem,
            known_agent_address=identity.agent_address,
        )
        bundles = BundleCache(
            cfg.data_dir / "bundles", RpcBundleSource(self._endpoint), MAX_BUNDLE_BYTES
        )
        ctx = RunnerContext(
            reporter,
            bundles,
            self._handles,
            cfg.data_dir / "work",
            secrets,
            cfg.seal_keys,
            limits=cfg.limits,
            health=health,
            agent_id=identity.agent_id,
            environment=identity.environment,
            result_stores=self._result_stores,
            default_result_store=cfg.result_stores.default or "",
            fetcher=ResultFetcher(self._endpoint, settings=cfg.result_stores.transfers),
        )
        self._worker = Worker(self._providers, ctx, cfg.capacity)
        self._worker.result_server = ResultServer(
            self._endpoint, self._result_stores, presigning=cfg.result_stores.presigning()
        )
        # Re-attach before connecting so Hello already lists the attempts we still hold.
        await self._worker.recover(await asyncio.to_thread(self._handles.load_all))
        held = {attempt.attempt_id for attempt in self._worker.held_attempts()}
        await asyncio.to_thread(remove_stale_work_dirs, cfg.data_dir / "work", held)
        if cfg.runner_slots > 0:
            self._flow_runners = FlowRunners(
                cfg.runner_slots,
                cfg.data_dir,
                bundles.get,
                cfg.control_plane.rsplit(":", 1)[0] or "127.0.0.1",
                fork_server=cfg.runner_fork_server,
                environment=identity.environment,
            )
            self._worker.flow_runners = self._flow_runners
        self._connection = Connection(
            self._endpoint,
            self._journal,
            reporter,
            self._worker.handle,
            self._hello,
            self._heartbeat,
            max_backoff_s=cfg.reconnect_max_backoff_s,
            rotator=CertificateRotator(cfg.data_dir, self._endpoint, socket.gethostname()),
        )
        connection = self._connection
        if self._flow_runners is not None:

            async def send_exit(run_id: str, epoch: int, code: int, message: str) -> None:
                await connection.send(convert.runner_exited_frame(run_id, epoch, code, message))

            # Re-attached runners are listed in the first Hello.
            await self._flow_runners.start(send_exit)
        self._worker.housekeeper = ResultHousekeeper(
            self._result_stores, lambda answer: connection.send(convert.housekeeping_frame(answer))
        )
        self._connection_task = asyncio.ensure_future(self._connection.run())
        health.on_change(self._connection.send_heartbeat_now)
        on_stall: Callable[[float], None] = self._stalls.record
        if cfg.metrics_listen:
            on_stall = self._serve_metrics(cfg, self._journal, self._worker, ctx.provider_errors)
        self._background = [
            asyncio.ensure_future(health.run_probe()),
            asyncio.ensure_future(loop_watchdog(cfg.limits.loop_stall_s, on_stall)),
            *retention_tasks(self._result_stores, cfg.result_stores.stores),
        ]

    def _serve_metrics(
        self, cfg: AgentConfig, journal: Journal, worker: Worker, errors: ProviderErrors
    ) -> Callable[[float], None]:
        metrics = self._metrics = AgentMetrics()
        metrics.gauges = AgentGauges(
            lambda: worker.in_use,
            cfg.capacity,
            journal.count,
            lambda: len(journal.quarantined()),
            lambda: worker.degraded,
            errors.snapshot,
        )
        self.metrics_address = metrics.serve(cfg.metrics_listen)
        log.info("agent metrics on http://%s:%d/metrics", *self.metrics_address)

        def on_stall(seconds: float) -> None:
            self._stalls.record(seconds)
            metrics.loop_stalled(seconds)

        return on_stall

    async def _drain(self, grace: float | None) -> None:
        grace_s = self._config.drain_grace_s if grace is None else grace
        worker, connection = self._worker, self._connection
        if worker is not None and connection is not None and not self._closed.is_set():
            # 1. Stop accepting and tell the control plane right away, not at the next beat.
            worker.draining = True
            connection.send_heartbeat_now()
            # 2. Let running steps finish up to grace; 3. cancel the rest (they report CANCELLED).
            await worker.drain(grace_s)
            # 4. Give the control plane a moment to ack the final reports.
            await connection.flush(FLUSH_TIMEOUT_S)
        # 5. Wake run(), which closes everything in its finally block.
        self._stop.set()
        if self._running:
            await self._closed.wait()

    async def _close(self) -> None:
        # Order: stop talking, stop runners, then release what they used.
        for task in self._background:
            task.cancel()
        if self._metrics is not None:
            self._metrics.close()
        if self._connection is not None and self._connection_task is not None:
            self._connection.stop()
            self._connection_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connection_task
        if self._worker is not None:
            await self._worker.abort()
        if self._flow_runners is not None:
            await self._flow_runners.close()  # the runner processes go on
        for provider in self._providers.values():
            try:
                await provider.close()
            except Exception:
                log.exception("closing provider %s failed", provider.type)
        if self._endpoint is not None:
            await self._endpoint.close()
        if self._reporter is not None:
            await self._reporter.close()  # what runners handed in is written before closing
        for store in (self._journal, self._handles):
            if store is not None:
                store.close()
        if self._lock is not None:
            self._lock.release()  # last: everything under the data dir is closed

    async def _hello(self) -> HelloInfo:
        assert self._worker is not None
        return HelloInfo(
            version=agent_version(),
            labels=dict(self._config.labels),
            providers=tuple(
                ProviderInfo(t, json.dumps(dict(p.options_schema), sort_keys=True))
                for t, p in self._providers.items()
            ),
            capacity=self._config.capacity,
            held_attempts=await self._held_attempts(),
            hostname=socket.gethostname(),
            draining=self._worker.draining,
            degraded=self._worker.degraded,
            result_stores=tuple(sorted(self._result_stores)),
            default_result_store=self._config.result_stores.default or "",
            runner_slots=self._config.runner_slots,
            held_runners=self._flow_runners.held() if self._flow_runners else (),
        )

    async def _held_attempts(self) -> tuple[HeldAttempt, ...]:
        """Running attempts, plus finished ones whose outcome still waits in the journal: the
        control plane must not count those as lost before the replay delivers their outcome.
        Any other attempt it thinks this agent runs, it rightly finds lost."""
        assert self._worker is not None and self._journal is not None
        held = {h.attempt_id: h for h in self._worker.held_attempts()}
        pending = await asyncio.to_thread(self._journal.pending_outcomes)
        for attempt_id, token in pending.items():
            held.setdefault(attempt_id, HeldAttempt(attempt_id, token))
        return tuple(held.values())

    def _heartbeat(self) -> HeartbeatInfo:
        assert self._worker is not None
        return HeartbeatInfo(
            in_use=self._worker.in_use,
            held_attempts=self._worker.held_attempts(),
            draining=self._worker.draining,
            degraded=self._worker.degraded,
            loop_stall_ms=self._stalls.take_ms(),
            held_runners=self._flow_runners.held() if self._flow_runners else (),
        )
