"""A real Meridian estate on loopback for integration tests: the control plane and every agent
run as separate processes started through the `meridian` CLI, talking gRPC over TLS."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from meridian.client import ControlClient
from meridian.core.errors import ConnectionFailed, ValidationError
from tests.support.deadlines import DEADLINE_S, TIME_SCALE
from tests.support.polling import poll_until

REPO = Path(__file__).resolve().parents[2]
FLOWS = Path(__file__).resolve().parent / "flows"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(address: str) -> bool:
    host, _, port = address.rpartition(":")
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, int(port))) == 0


def meridian_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "meridian", *args]


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("MERIDIAN_CONTROL_PLANE", None)
    env.pop("MERIDIAN_CA_FILE", None)
    env.pop("MERIDIAN_TOKEN", None)
    # Never read the developer's own saved profiles.
    env["MERIDIAN_CONFIG_DIR"] = str(Path(env.get("TMPDIR", "/tmp")) / "meridian-test-no-profiles")
    env.update(extra or {})
    return env


class Estate:
    """Start with ``start()``, add agents, run flows, and always ``stop()``."""

    def __init__(
        self,
        root: Path,
        *,
        lost_after_s: float | None = None,
        heartbeat_s: float | None = None,
        runner_grace_s: float | None = None,
        advertise_agent_address: str | None = None,
        db_url: str | None = None,
        agent_certificate_hours: float | None = None,
    ) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.server_dir = root / "server"
        self.address = f"127.0.0.1:{free_port()}"
        self.agent_address = f"127.0.0.1:{free_port()}"
        self.lost_after_s = lost_after_s
        self.heartbeat_s = heartbeat_s
        self.runner_grace_s = runner_grace_s
        self.advertise_agent_address = advertise_agent_address
        self.db_url = db_url
        self.agent_certificate_hours = agent_certificate_hours
        self.server: subprocess.Popen[bytes] | None = None
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[Path] = []
        self._log_of: dict[int, Path] = {}  # pid of a background client command -> its output
        self._cli_numbers = itertools.count()
        self.token = ""  # an admin API token, issued once the control plane first listens
        self._agent_labels: dict[str, dict[str, str]] = {}

    @property
    def ca_file(self) -> Path:
        return self.server_dir / "tls" / "ca.crt"

    def cli(
        self,
        *args: str,
        check: bool = False,
        timeout: float = 1.5 * DEADLINE_S,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a client command against this estate and capture its output.

        The default outlasts a ``DEADLINE_S`` wait inside the command (``runs cancel --wait``)
        and stays under pytest's per-test limit, so a hang fails here, with the output.
        """
        result = subprocess.run(
            meridian_cmd(*args),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=child_env(
                {
                    "MERIDIAN_CONTROL_PLANE": self.address,
                    "MERIDIAN_CA_FILE": str(self.ca_file),
                    "MERIDIAN_TOKEN": self.token,
                    **(env or {}),
                }
            ),
            cwd=self.root,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"meridian {' '.join(args)} exited {result.returncode}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result

    def enroll(
        self, token: str, data_dir: Path | str, *args: str, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """``meridian agent enroll`` with ``token`` into ``data_dir`` against this estate."""
        return self.cli(
            "agent", "enroll", "--control-plane", self.address,
            "--ca-file", str(self.ca_file), "--token", token, "--data-dir", str(data_dir),
            *args, check=check,
        )  # fmt: skip

    def cli_background(
        self, *args: str, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a client command without waiting for it (output goes to a log file)."""
        # A counter, not len(self._logs): lanes of the soak start commands from several threads.
        log = self.root / f"cli-{next(self._cli_numbers)}.log"
        self._logs.append(log)
        with open(log, "wb") as out:
            process = subprocess.Popen(
                meridian_cmd(*args),
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                env=child_env(
                    {
                        "MERIDIAN_CONTROL_PLANE": self.address,
                        "MERIDIAN_CA_FILE": str(self.ca_file),
                        "MERIDIAN_TOKEN": self.token,
                        **(env or {}),
                    }
                ),
            )
        self._log_of[process.pid] = log
        return process

    def _spawn(self, name: str, args: Sequence[str]) -> subprocess.Popen[bytes]:
        log = self.root / f"{name}.log"
        if log not in self._logs:
            self._logs.append(log)
        with open(log, "ab") as out:
            return subprocess.Popen(
                meridian_cmd(*args),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=child_env(),
                start_new_session=True,
            )

    def start(self) -> Estate:
        self.server = self._spawn("server", self._server_args())
        # Listening means migrated; then an admin API token (kept across restarts) for every
        # client call the tests make, exactly as an operator would get one.
        self.wait_until(lambda: _listening(self.address), "control plane to listen")
        if not self.token:
            self.token = self.new_api_token("admin", name="tests")
        self.wait_until(lambda: self.client().list_agents() is not None, "control plane to serve")
        return self

    def new_api_token(self, role: str, *extra: str, name: str = "") -> str:
        args = ["api-tokens", "create", "--data-dir", str(self.server_dir), "--role", role]
        if name:
            args += ["--name", name]
        if self.db_url:
            args += ["--db", self.db_url]
        output = self.cli(*args, *extra, check=True).stdout
        return output.strip().splitlines()[-1].strip()

    def _server_args(self) -> list[str]:
        args = [
            "server",
            "start",
            "--data-dir",
            str(self.server_dir),
            "--listen",
            self.address,
            "--agent-listen",
            self.agent_address,
        ]
        for flag, value in (
            ("--agent-lost-after", self.lost_after_s),
            ("--heartbeat-interval", self.heartbeat_s),
            ("--runner-grace", self.runner_grace_s),
            ("--advertise-agent-address", self.advertise_agent_address),
            ("--db", self.db_url),
            ("--agent-certificate-hours", self.agent_certificate_hours),
        ):
            if value is not None:
                args += [flag, str(value)]
        return args

    def kill_server(self) -> None:
        """SIGKILL the control plane: no shutdown, no flush beyond what was committed."""
        assert self.server is not None
        self.server.kill()
        self.server.wait(timeout=DEADLINE_S)
        self.server = None

    def restart_server(self) -> None:
        """Start the control plane again on the same data, database and ports."""
        self.start()

    def client(self, token: str | None = None) -> ControlClient:
        # A per-call deadline well under DEADLINE_S: a call lost in a cut network fails and the
        # wait_until around it tries again, instead of using up the whole wait.
        return ControlClient(
            self.address, self.ca_file, timeout_s=10 * TIME_SCALE, token=token or self.token
        )

    def add_agent(
        self,
        environment: str,
        labels: Mapping[str, str],
        *,
        capacity: int = 4,
        name: str | None = None,
        config: Path | None = None,
        runner_slots: int = 0,
    ) -> str:
        name = name or f"{environment}-agent"
        data_dir = self.root / "agents" / name
        self.enroll(self.new_token(environment), data_dir, "--name", name, check=True)
        if runner_slots:
            self.start_agent(
                name, environment, labels, capacity=capacity, runner_slots=runner_slots
            )
        elif config is None:  # subclasses may override start_agent without ``config``
            self.start_agent(name, environment, labels, capacity=capacity)
        else:
            self.start_agent(name, environment, labels, capacity=capacity, config=config)
        return name

    def new_token(self, environment: str, *extra: str) -> str:
        """A one-time join token, issued on the control-plane host (its data dir / database)."""
        args = [
            "tokens",
            "create",
            "--data-dir",
            str(self.server_dir),
            "--environment",
            environment,
        ]
        if self.db_url:
            args += ["--db", self.db_url]
        output = self.cli(*args, *extra, check=True).stdout
        return output.strip().splitlines()[-1].strip()

    def start_agent(
        self,
        name: str,
        environment: str,
        labels: Mapping[str, str],
        *,
        capacity: int = 4,
        config: Path | None = None,
        runner_slots: int = 0,
    ) -> None:
        """``config``: an agent config file (``--config``), e.g. with ``[sealing.keys]``;
        ``runner_slots``: hosted flow runners it offers (decision 0018)."""
        data_dir = self.root / "agents" / name
        args = [
            "agent",
            "start",
            "--control-plane",
            self.address,
            "--ca-file",
            str(self.ca_file),
            "--environment",
            environment,
            "--data-dir",
            str(data_dir),
            "--provider",
            "process",
            "--capacity",
            str(capacity),
            "--drain-grace",
            "5",
        ]
        for key, value in labels.items():
            args += ["--label", f"{key}={value}"]
        if config is not None:
            args += ["--config", str(config)]
        if runner_slots:
            args += ["--runner-slots", str(runner_slots)]
        self._agent_labels[name] = dict(labels)
        self.agents[name] = self._spawn(f"agent-{name}", args)
        self.wait_until(lambda: self._connected(name), f"agent {name} to connect")

    def _connected(self, name: str) -> bool:
        with self.client() as client:
            return any(a.name == name and a.status == "connected" for a in client.list_agents())

    def wait_until(
        self, check: Callable[[], object], what: str, timeout: float = DEADLINE_S
    ) -> None:
        """Poll ``check`` until it is true; fail with every process's log when it never is."""

        def holds() -> object:
            if self.server is not None and self.server.poll() is not None:
                raise AssertionError(
                    f"control plane exited while waiting for {what}\n{self.logs()}"
                )
            return check()

        poll_until(
            holds,
            timeout=timeout,
            interval=0.1,
            message=lambda: f"{what}\n{self.logs()}",
            ignore=(ConnectionFailed, ValidationError),  # not listening / CA not written yet
        )

    def kill_agent(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal the agent process only (its step processes live in their own groups)."""
        proc = self.agents.pop(name)
        proc.send_signal(sig)
        proc.wait(timeout=DEADLINE_S)

    def agent_labels(self, name: str) -> dict[str, str]:
        return self._agent_labels[name]

    def cli_log(self, process: subprocess.Popen[bytes]) -> Path | None:
        """The output file of a background client command started by :meth:`cli_background`."""
        return self._log_of.get(process.pid)

    def run_background(self, flow_file: Path, flow: str, *params: str) -> subprocess.Popen[bytes]:
        """`meridian run` in the background (a flow runner we can kill)."""
        args = ["run", f"{flow_file}:{flow}"]
        for p in params:
            args += ["-p", p]
        return self.cli_background(*args)

    def latest_run_id(self, flow: str, timeout: float = DEADLINE_S) -> str:
        found: list[str] = []

        def created() -> bool:
            runs = self.client().list_runs(limit=1, flow_name=flow)
            found[:] = [runs[0].flow_run_id] if runs else []
            return bool(found)

        self.wait_until(created, f"a run of {flow} to exist", timeout)
        return found[0]

    def wait_for_state(self, run_id: str, states: set[str], timeout: float = DEADLINE_S) -> str:
        seen: list[str] = []

        def reached() -> bool:
            seen[:] = [self.client().get_run(run_id).state]
            return seen[0] in states

        self.wait_until(reached, f"run {run_id} to reach {sorted(states)}", timeout)
        return seen[0]

    def logs(self) -> str:
        parts = []
        for log in self._logs:
            if log.exists():
                parts.append(f"--- {log.name} ---\n{log.read_text(errors='replace')[-6000:]}")
        return "\n".join(parts)

    def __enter__(self) -> Estate:
        """``with Estate(...) as e:`` starts it, prints every log if setting up fails, and
        always stops every process."""
        try:
            return self.start()
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            print(self.logs())
        self.stop()

    def stop(self) -> None:
        for proc in self.agents.values():
            _terminate(proc)
        self.agents.clear()
        if self.server is not None:
            _terminate(self.server)
            self.server = None


def _terminate(proc: subprocess.Popen[bytes], timeout: float = DEADLINE_S) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=DEADLINE_S)
