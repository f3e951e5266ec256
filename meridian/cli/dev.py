"""``meridian dev``: the one-command demo — a control plane, three agents and a cross-cloud run.

Everything lives in this one process. The control plane and the agents share one asyncio loop
on a background thread; the main thread is the flow runner, exactly as in ``meridian run``, and
talks to them over real gRPC with TLS on loopback. Three agents stand in for an AWS account, a
GCP project and an on-prem data centre, told apart only by their labels — which is all a step's
target looks at.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import meridian
from meridian.cli.common import CliError, expand_path, logging_to, parse_address
from meridian.cli.render import render_run
from meridian.cli.run import ProgressPrinter

if TYPE_CHECKING:
    from agent import Agent
    from control_plane.server import ControlPlane
    from meridian.client import ControlClient

T = TypeVar("T")
C = TypeVar("C")

EXAMPLE = Path("examples") / "cross_cloud_etl.py"
FLOW_NAME = "cross_cloud_etl"
CONNECT_TIMEOUT_S = 20.0
# Hosted flow runners per local agent (decision 0018): deployments' bodies run on them.
DEV_RUNNER_SLOTS = 2
AGENT_DRAIN_S = 5.0
# The example also runs as a deployment on a schedule (a hosted runner runs its body).
DEPLOYMENT = "demo-etl"
SCHEDULE_EVERY_S = 3
SCHEDULED_RUN_TIMEOUT_S = 60.0
SERVER_GRACE_S = 2.0
LOG_FILE = "dev.log"


@dataclass(frozen=True)
class DemoSite:
    environment: str
    labels: dict[str, str]


SITES = (
    DemoSite("aws-demo", {"cloud": "aws", "region": "us-east-1"}),
    DemoSite("gcp-demo", {"cloud": "gcp", "region": "europe-west1"}),
    DemoSite("onprem-demo", {"site": "dc1"}),
)


def register(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    dev = commands.add_parser(
        "dev",
        help="one-command demo: control plane + 3 agents + a cross-cloud run",
        parents=parents,
        description="Start a control plane and three demo agents in this process, run "
        "examples/cross_cloud_etl.py and print its audit view.",
    )
    dev.add_argument("--data-dir", metavar="DIR", help="keep state here (default: a temp dir)")
    dev.add_argument("--keep", action="store_true", help="do not delete the temp dir at the end")
    dev.add_argument(
        "--http-listen",
        metavar="HOST:PORT",
        default="127.0.0.1:0",
        help="where the web console listens (default: a free port on 127.0.0.1)",
    )
    dev.add_argument(
        "--serve",
        action="store_true",
        help="after the run, keep the control plane, agents and console up until Ctrl-C",
    )
    dev.set_defaults(func=cmd_dev)


def find_example() -> Path:
    """``examples/cross_cloud_etl.py`` of the source tree this package was loaded from."""
    package_dir = Path(next(iter(meridian.__path__))).resolve()
    candidates = [package_dir.parent / EXAMPLE, Path.cwd() / EXAMPLE]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = ", ".join(str(c) for c in dict.fromkeys(candidates))
    raise CliError(
        f"cannot find {EXAMPLE} (looked in {looked}); run `meridian dev` from a Meridian "
        "source checkout"
    )


class BackgroundLoop:
    """An asyncio loop on a daemon thread, driven from synchronous code."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="meridian-dev", daemon=True
        )
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def spawn(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        """Start ``coro`` on the loop; the returned future tracks it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        """Cancel whatever is left on the loop, then stop it and its thread."""
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                self.call(_cancel_leftovers(), timeout=10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.loop.close()


async def _cancel_leftovers() -> None:
    # Without this, tasks still pending when the loop stops are reported as destroyed.
    me = asyncio.current_task()
    leftovers = [task for task in asyncio.all_tasks() if task is not me]
    for task in leftovers:
        task.cancel()
    await asyncio.gather(*leftovers, return_exceptions=True)
    loop = asyncio.get_running_loop()
    await loop.shutdown_asyncgens()
    await loop.shutdown_default_executor()


async def _construct(factory: Callable[[C], T], config: C) -> T:
    # Built on the loop's thread so anything loop-bound in __init__ binds to the right loop.
    return factory(config)


class DemoEstate:
    """The control plane and the three demo agents, run on a BackgroundLoop."""

    def __init__(
        self, root: Path, background: BackgroundLoop, http_listen: str = "127.0.0.1:0"
    ) -> None:
        self.root = root
        self.http_listen = http_listen
        self._bg = background
        self._plane: ControlPlane | None = None
        self._agents: list[tuple[DemoSite, Agent, Future[None]]] = []
        self.agent_ids: dict[str, str] = {}

    @property
    def plane(self) -> ControlPlane:
        if self._plane is None:
            raise RuntimeError("the control plane has not been started")
        return self._plane

    @property
    def address(self) -> str:
        return self.plane.address

    @property
    def ca_file(self) -> Path:
        return Path(self.plane.ca_file)

    def start_control_plane(self) -> None:
        from control_plane.config import ServerConfig
        from control_plane.server import ControlPlane

        config = ServerConfig(
            data_dir=self.root / "server",
            listen="127.0.0.1:0",
            agent_listen="127.0.0.1:0",
            http_listen=self.http_listen,
        )
        plane = self._bg.call(_construct(ControlPlane, config))
        self._plane = plane
        self._bg.call(plane.start(), timeout=30)

    def enroll_agents(self) -> None:
        """Enroll one agent per site, reusing an enrollment kept in ``--data-dir``."""
        from control_plane.admin import create_join_token
        from meridian.cli.agent import enroll_agent, read_identity

        for site in SITES:
            data_dir = self._agent_dir(site)
            if (data_dir / "identity.json").is_file():
                identity = read_identity(data_dir)
                if identity["environment"] == site.environment:
                    self.agent_ids[site.environment] = str(identity["agent_id"])
                    continue
            token = create_join_token(self.root / "server", site.environment, ttl_s=300)
            agent_id, _ = enroll_agent(
                self.address, self.ca_file, token, data_dir, f"{site.environment}-agent"
            )
            self.agent_ids[site.environment] = agent_id

    def start_agents(self) -> None:
        from agent import Agent, AgentConfig

        for site in SITES:
            config = AgentConfig(
                # The client address, like a real agent: it finds the mTLS agent listener
                # through GetServerInfo (decision 0001), also after a restart on new ports.
                control_plane=self.address,
                data_dir=self._agent_dir(site),
                ca_file=self.ca_file,
                labels=site.labels,
                providers=("process",),
                capacity=4,
                runner_slots=DEV_RUNNER_SLOTS,  # hosted runs of deployments run here too
                drain_grace_s=AGENT_DRAIN_S,
                reconnect_max_backoff_s=1.0,
            )
            agent = self._bg.call(_construct(Agent, config))
            self._agents.append((site, agent, self._bg.spawn(agent.run())))

    def wait_until_connected(
        self, client: ControlClient, timeout: float = CONNECT_TIMEOUT_S
    ) -> float:
        """Poll until every demo agent is connected; returns the seconds it took."""
        started = time.monotonic()
        wanted = set(self.agent_ids.values())
        statuses: dict[str, str] = {}
        while time.monotonic() - started < timeout:
            for site, _, running in self._agents:
                if running.done():
                    error = running.exception()
                    raise CliError(f"the {site.environment} agent stopped: {error or 'exited'}")
            statuses = {a.agent_id: a.status for a in client.list_agents()}
            if all(statuses.get(agent_id) == "connected" for agent_id in wanted):
                return time.monotonic() - started
            time.sleep(0.1)
        waiting = [
            f"{env} ({statuses.get(agent_id) or 'not seen'})"
            for env, agent_id in self.agent_ids.items()
            if statuses.get(agent_id) != "connected"
        ]
        raise CliError(f"demo agents did not connect within {timeout:g}s: {', '.join(waiting)}")

    def shutdown(self) -> list[str]:
        """Drain the agents, then stop the control plane; returns problems met on the way."""
        problems: list[str] = []

        async def drain_all() -> None:
            await asyncio.gather(*(agent.shutdown(AGENT_DRAIN_S) for _, agent, _ in self._agents))

        try:
            if self._agents:
                self._bg.call(drain_all(), timeout=AGENT_DRAIN_S + 10)
            for _, _, running in self._agents:
                running.result(timeout=10)
        except Exception as exc:
            problems.append(f"stopping the agents: {exc!r}")
        try:
            if self._plane is not None:
                self._bg.call(self._plane.shutdown(SERVER_GRACE_S), timeout=SERVER_GRACE_S + 10)
        except Exception as exc:
            problems.append(f"stopping the control plane: {exc!r}")
        return problems

    def _agent_dir(self, site: DemoSite) -> Path:
        return self.root / "agents" / site.environment


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Let SIGTERM take the same clean-up path as Ctrl-C (main thread only)."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_demo(estate: DemoEstate, example: Path, serve: bool = False) -> int:
    from meridian.client import ControlClient
    from meridian.sdk.runner import run_flow

    estate.start_control_plane()
    print(f"control plane listening on {estate.address} (data in {estate.root})", flush=True)
    estate.enroll_agents()
    estate.start_agents()
    from control_plane.admin import create_api_token

    # The demo acts as an operator: every client call carries an API token, as in production.
    token = create_api_token(estate.root / "server", "operator", name="meridian dev")
    _announce_console(estate, token)
    with ControlClient(estate.address, estate.ca_file, token=token) as client:
        took = estate.wait_until_connected(client)
        sites = ", ".join(f"{s.environment} [{_labels(s)}]" for s in SITES)
        print(f"3 agents connected in {took:.1f}s: {sites}", flush=True)
        print(f"\nrunning {example.name}:{FLOW_NAME}\n", flush=True)
        outcome = run_flow(client, f"{example}:{FLOW_NAME}", {}, on_update=ProgressPrinter())
        detail = client.get_run(outcome.flow_run_id)
    print(f"\nRun {outcome.flow_run_id} finished: {outcome.state}\n")
    print(render_run(detail))
    with ControlClient(estate.address, estate.ca_file, token=token) as client:
        scheduled = _scheduled_run(client, example)
    if serve:
        print(f"\nconsole: https://{estate.plane.http_address}/ — press Ctrl-C to stop", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    return 0 if outcome.state == scheduled == "COMPLETED" else 1


def _scheduled_run(client: ControlClient, example: Path) -> str:
    """Deploy the example with an interval schedule, show the deployment and its first
    scheduled run (on a hosted runner of a demo agent), then pause it; returns its state."""
    from meridian import _deployments
    from meridian.cli.deployments import render_info
    from meridian.core.bundle import pack_directory
    from meridian.core.paramschema import schema_from_function
    from meridian.sdk.loader import load_entrypoint

    entrypoint = f"{example}:{FLOW_NAME}"
    loaded = load_entrypoint(entrypoint)
    bundle = pack_directory(loaded.root)
    client.ensure_bundle(bundle)
    anchor = "2000-01-01T00:00:00Z"
    every = {"kind": "interval", "every_seconds": SCHEDULE_EVERY_S, "anchor": anchor}
    request = _deployments.DeploymentRequest(
        name=DEPLOYMENT,
        flow_name=loaded.flow.name,
        entrypoint=entrypoint,
        bundle_sha256=bundle.sha256,
        parameter_schema=schema_from_function(loaded.flow.fn),
        schedules=(_deployments.ScheduleRequest(every),),
        concurrency=1,
        concurrency_overflow="skip",  # one run at a time: slots during a run are skipped
        description=f"meridian dev: {FLOW_NAME} every {SCHEDULE_EVERY_S} s",
    )
    client.create_deployment(request)
    client.set_deployment_paused(DEPLOYMENT, False)  # a kept --data-dir may have it paused
    print(f"\ndeployed {DEPLOYMENT}: {FLOW_NAME} every {SCHEDULE_EVERY_S}s on a hosted runner; "
          "waiting for its first scheduled run\n", flush=True)  # fmt: skip
    deadline = time.monotonic() + SCHEDULED_RUN_TIMEOUT_S
    ended = ("COMPLETED", "FAILED", "CANCELLED", "CRASHED")
    while True:
        info = client.get_deployment(DEPLOYMENT)
        done = [r for r in info.recent_runs if r.trigger == "schedule" and r.state in ended]
        if done:
            break
        if time.monotonic() > deadline:
            raise CliError(f"no scheduled run of {DEPLOYMENT} ended within "
                           f"{SCHEDULED_RUN_TIMEOUT_S:g}s")  # fmt: skip
        time.sleep(0.2)
    info = client.set_deployment_paused(DEPLOYMENT, True)  # one scheduled run is the demo
    run = done[-1]
    print(render_info(info))
    print(f"\nScheduled run {run.flow_run_id} finished: {run.state}\n")
    print(render_run(client.get_run(run.flow_run_id)))
    return run.state


def _announce_console(estate: DemoEstate, token: str) -> None:
    """Where the web console is, and the token to log in with (in a file, not on screen)."""
    token_file = estate.root / "console-token"
    token_file.touch(mode=0o600)
    token_file.write_text(token + "\n", encoding="utf-8")
    print(
        f"web console: https://{estate.plane.http_address}/runs (self-signed CA "
        f"{estate.ca_file}; log in with the operator token in {token_file})",
        flush=True,
    )


def _labels(site: DemoSite) -> str:
    return ",".join(f"{k}={v}" for k, v in site.labels.items())


def _stop(estate: DemoEstate, background: BackgroundLoop) -> None:
    for problem in estate.shutdown():
        print(f"warning: {problem}", file=sys.stderr)
    background.close()


def _tidy(root: Path, *, remove: bool) -> None:
    if remove:
        shutil.rmtree(root, ignore_errors=True)
        return
    # Kept on failure too: the logs and the database explain what went wrong.
    print(
        f"\nstate and logs ({LOG_FILE}) kept in {root}; browse the runs with "
        f"`meridian server start --data-dir {root / 'server'}`",
        file=sys.stderr,
    )


def cmd_dev(args: argparse.Namespace) -> int:
    args.http_listen = parse_address(args.http_listen, allow_port_zero=True)
    example = find_example()
    temporary = args.data_dir is None
    root = (
        Path(tempfile.mkdtemp(prefix="meridian-dev-")) if temporary else expand_path(args.data_dir)
    )
    root.mkdir(parents=True, exist_ok=True)
    # The components' logs would drown the demo's output; they go to a file unless --debug.
    log_file = None if args.debug else root / LOG_FILE
    code = 1
    try:
        with logging_to(log_file, debug=args.debug):
            background = BackgroundLoop()
            estate = DemoEstate(root, background, args.http_listen)
            try:
                with _sigterm_as_interrupt():
                    code = _run_demo(estate, example, args.serve)
            finally:
                _stop(estate, background)
    finally:
        _tidy(root, remove=temporary and not args.keep and code == 0)
    return code
