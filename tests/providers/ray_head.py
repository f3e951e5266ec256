"""A real local Ray head (with its job server) for the Ray provider's integration tests.

``RayHead.start()`` runs this file as a script in a child process that calls ``ray.init`` with
the dashboard (which hosts the Job Submission API) on a free loopback port and token
authentication on, prints one JSON line with the dashboard address, and then blocks on stdin.
Closing stdin makes it call ``ray.shutdown()``, which stops every Ray process it started; only
if that hangs is the child's own process group killed by id. Never ``ray stop``: it kills Ray
processes by name, including other people's.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RayHead:
    """A running head: ``address`` is the job server URL, ``token`` its bearer token."""

    address: str
    token: str
    temp_dir: Path
    proc: subprocess.Popen[bytes] = field(repr=False)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @classmethod
    def start(cls, num_cpus: int = 2) -> RayHead:
        # Short path: Ray's unix sockets live under it and sun_path holds 107 bytes.
        temp_dir = Path(tempfile.mkdtemp(prefix="mray", dir="/tmp"))
        token = secrets.token_hex(16)
        env = dict(os.environ)
        # Token auth (the default for new clusters in Ray 2.60) with the token passed in the
        # environment, so nothing is written to ~/.ray/auth_token.
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0")
        port = _free_port()
        argv = [sys.executable, __file__, str(port), str(temp_dir), str(num_cpus)]
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(temp_dir / "head.log", "wb"),  # noqa: SIM115 - the child owns it
            env=env,
            start_new_session=True,  # its own process group: killable by id as a last resort
        )
        head = cls(address="", token=token, temp_dir=temp_dir, proc=proc)
        try:
            head.address = f"http://{head._read_ready()}"
        except BaseException:
            head.stop()
            raise
        return head

    def _read_ready(self) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the Ray head exited early; see {self.temp_dir}/head.log")
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                line = self.proc.stdout.readline()
                return str(json.loads(line)["dashboard_url"])
        raise RuntimeError(f"the Ray head did not start in {START_TIMEOUT_S:g} s")

    def stop(self) -> None:
        """Ask the child to ``ray.shutdown()``; kill its process group only if that hangs."""
        stdin: IO[bytes] | None = self.proc.stdin
        if stdin is not None:
            with contextlib.suppress(OSError):
                stdin.close()
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _serve(port: int, temp_dir: str, num_cpus: int) -> None:
    import ray

    ctx = ray.init(
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=port,
        num_cpus=num_cpus,
        _temp_dir=temp_dir,
        log_to_driver=False,
    )
    print(json.dumps({"dashboard_url": ctx.dashboard_url}), flush=True)
    try:
        sys.stdin.read()  # until the test closes our stdin (or dies)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    # Run as a script, this file's directory is sys.path[0]; it holds the test package
    # ``tests/providers/ray``, which would shadow the real ``ray`` imported by _serve.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    _serve(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
