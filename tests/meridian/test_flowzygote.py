"""The fork server of hosted runners (``meridian.flowzygote``) as a real process: each child
runs with exactly the requested environment, in its own session, with the run's log on fd 1/2
and its work dir as cwd; the server never holds a run's token after its fork (not in its
environment, its command line or its memory); children's PRNGs differ; end of input stops the
server and not its children; a malformed request stops it; a request it cannot fork faithfully
is refused."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import select
import signal
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from meridian import flowzygote
from tests.support.deadlines import DEADLINE_S
from tests.support.polling import poll_until

# What each child runs instead of meridian.flowexec: records what a runner would see, then
# waits until its work dir has "stop" (whose text is its exit code).
SERVER = """
import json, os, random, sys, time
from pathlib import Path
from meridian import flowzygote

def entry():
    work = Path(os.getcwd())
    fds = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    print("to stdout")
    print("to stderr", file=sys.stderr)
    (work / "seen.tmp").write_text(json.dumps({
        "pid": os.getpid(), "sid": os.getsid(0), "pgid": os.getpgid(0), "cwd": os.getcwd(),
        "env": dict(os.environ), "random": random.random(), "fds": fds,
    }))
    os.replace(work / "seen.tmp", work / "seen.json")
    while not (work / "stop").exists():
        time.sleep(0.05)
    return int((work / "stop").read_text() or 0)

# While the server's start directory has "nofork", its fork() fails as at a pids limit.
NO_FORK = os.path.abspath("nofork")
real_fork = os.fork

def fork():
    if os.path.exists(NO_FORK):
        import errno
        raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))
    return real_fork()

os.fork = fork
flowzygote.main(entry=entry)
"""


class Server:
    """A fork server started as an agent starts it, and the agent's end of its pipes."""

    def __init__(self, tmp_path: Path) -> None:
        script = tmp_path / "server.py"
        script.write_text(SERVER)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MERIDIAN_")}
        self.proc = subprocess.Popen(
            [sys.executable, str(script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=self.env,
            cwd=tmp_path,
            bufsize=0,
            start_new_session=True,
        )
        self.tmp_path = tmp_path
        self.children: set[int] = set()  # started, and not reported as exited
        assert self.read()["op"] == "ready"

    def read(self) -> dict[str, Any]:
        header = self._read(4)
        (size,) = struct.unpack(">I", header)
        value = json.loads(self._read(size))
        assert isinstance(value, dict)
        if value.get("op") == "started":
            self.children.add(value["pid"])
        elif value.get("op") == "exited":
            self.children.discard(value["pid"])
        return value

    def _read(self, size: int) -> bytes:
        assert self.proc.stdout is not None
        data = b""
        while len(data) < size:
            ready, _, _ = select.select([self.proc.stdout], [], [], DEADLINE_S)
            assert ready, "the fork server did not answer"
            chunk = self.proc.stdout.read(size - len(data))
            assert chunk, "the fork server's output ended"
            data += chunk
        return data

    def send_raw(self, body: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(struct.pack(">I", len(body)) + body)

    def request(self, run_id: str, token: str, **changes: Any) -> dict[str, Any]:
        work = self.tmp_path / run_id
        work.mkdir()
        request = {
            "op": "run",
            "run_id": run_id,
            "epoch": 1,
            "env": {**self.env, "MERIDIAN_FLOWEXEC_RUN_ID": run_id},
            "work_dir": str(work),
            "log_path": str(work / "runner.log"),
            **changes,
        }
        self.send_raw(json.dumps(request).encode() + b"\0" + token.encode())
        return request

    def stop(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.proc.wait(DEADLINE_S)


@pytest.fixture
def server(tmp_path: Path) -> Any:
    started = Server(tmp_path)
    yield started
    if started.proc.poll() is None:
        started.proc.kill()
        started.proc.wait()
    # A test that failed midway leaves children waiting for their "stop" forever: each leads
    # its own group (a pid reused since is no group leader of that id, and is spared).
    for pid in started.children:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def seen(work: Path) -> dict[str, Any]:
    try:
        value = json.loads((work / "seen.json").read_text())
    except OSError:
        return {}
    assert isinstance(value, dict)
    return value


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def memory_holds(pid: int, needle: bytes) -> bool:
    """Whether any readable mapping of ``pid`` contains ``needle``."""
    found = False
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
            span, perms = line.split()[:2]
            if not perms.startswith("r"):
                continue
            start, end = (int(x, 16) for x in span.split("-"))
            try:
                mem.seek(start)
                data = mem.read(end - start)
            except (OSError, OverflowError, ValueError):
                continue  # [vvar] and the like
            found = found or (data is not None and needle in data)
    return found


def token() -> str:
    return "mat_" + secrets.token_urlsafe(32)


def test_a_child_runs_with_exactly_its_environment_in_its_own_session(server: Server) -> None:
    secret = token()
    request = server.request("run-1", secret)
    started = server.read()
    assert started["op"] == "started" and started["run_id"] == "run-1"
    work = Path(request["work_dir"])
    info = poll_until(lambda: seen(work), message="the child to start")
    assert info["pid"] == started["pid"]
    assert info["env"] == {**request["env"], "MERIDIAN_FLOWEXEC_TOKEN": secret}
    assert info["sid"] == info["pgid"] == info["pid"] != os.getsid(server.proc.pid)
    assert info["cwd"] == str(work)
    fds = info["fds"]
    assert fds["0"] == os.devnull
    assert fds["1"] == fds["2"] == request["log_path"]
    assert not [fd for fd, target in fds.items() if target.startswith("pipe:")]  # no server pipe
    (work / "stop").write_text("3")
    assert server.read() == {"op": "exited", "pid": info["pid"], "code": 3}
    assert (work / "runner.log").read_text().splitlines() == ["to stdout", "to stderr"]
    assert server.stop() == 0


def test_the_server_keeps_no_token_after_the_fork(server: Server) -> None:
    secret = token()
    request = server.request("run-1", secret)
    assert server.read()["op"] == "started"
    pid = server.proc.pid
    needle = secret.encode()
    assert needle not in Path(f"/proc/{pid}/environ").read_bytes()
    assert needle not in Path(f"/proc/{pid}/cmdline").read_bytes()
    child = poll_until(lambda: seen(Path(request["work_dir"])), message="the child")["pid"]
    try:
        # The scan finds a token where there is one (the child's environment)...
        assert memory_holds(child, needle)
        # ... and there is none left in the server.
        assert not memory_holds(pid, needle)
    except PermissionError:
        pytest.skip("reading another process's memory is not permitted here")
    finally:
        (Path(request["work_dir"]) / "stop").write_text("0")
    assert server.read()["op"] == "exited"


def test_children_do_not_share_the_servers_random_state(server: Server) -> None:
    works = []
    for run_id in ("run-1", "run-2"):
        works.append(Path(server.request(run_id, token())["work_dir"]))
        assert server.read()["op"] == "started"
    values = [poll_until(lambda w=w: seen(w), message="a child")["random"] for w in works]
    assert values[0] != values[1]
    for work in works:
        (work / "stop").write_text("0")
    assert {server.read()["op"], server.read()["op"]} == {"exited"}


def test_end_of_input_stops_the_server_and_not_its_children(server: Server) -> None:
    work = Path(server.request("run-1", token())["work_dir"])
    pid = server.read()["pid"]
    assert server.stop() == 0
    assert alive(pid)
    (work / "stop").write_text("0")
    poll_until(lambda: not alive(pid), message="the child to end on its own")


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"op": "run"}', id="no-token"),
        pytest.param(b"not json\0mat_x", id="not-json"),
        pytest.param(b'{"op": "run", "run_id": "r", "epoch": 1}\0mat_x', id="no-env"),
        pytest.param(b'{"op": "run"}\0mat x', id="token-not-printable"),
    ],
)
def test_a_malformed_request_stops_the_server(server: Server, body: bytes) -> None:
    server.send_raw(body)
    assert server.proc.wait(DEADLINE_S) == 2


def test_a_request_with_the_token_in_its_environment_stops_the_server(server: Server) -> None:
    server.request("run-1", token(), env={**server.env, "MERIDIAN_FLOWEXEC_TOKEN": "mat_x"})
    assert server.proc.wait(DEADLINE_S) == 2


def test_a_request_whose_settings_differ_from_the_servers_is_refused(server: Server) -> None:
    # The server imported modules that read the environment (e.g. the lease length): a child
    # with other settings would not be what a fresh runner is.
    server.request("run-1", token(), env={**server.env, "MERIDIAN_RUNNER_LEASE_S": "2"})
    refused = server.read()
    assert refused["op"] == "refused" and "MERIDIAN_RUNNER_LEASE_S" in refused["reason"]
    work = Path(server.request("run-2", token())["work_dir"])
    assert server.read()["op"] == "started"  # the server goes on
    (work / "stop").write_text("0")
    assert server.read()["op"] == "exited"


def test_a_failed_fork_is_refused_and_the_server_goes_on(server: Server) -> None:
    # fork() fails with EAGAIN at a pids limit: nothing was forked, so the agent may start a
    # fresh process; the server must not die of it (the agent would count it as lost runners).
    (server.tmp_path / "nofork").write_text("")
    server.request("run-1", token())
    refused = server.read()
    assert refused["op"] == "refused" and refused["run_id"] == "run-1"
    assert "fork failed" in refused["reason"]
    assert server.proc.poll() is None
    (server.tmp_path / "nofork").unlink()
    work = Path(server.request("run-2", token())["work_dir"])
    assert server.read()["op"] == "started"
    (work / "stop").write_text("0")
    assert server.read()["op"] == "exited"
    assert server.stop() == 0


def test_a_killed_child_is_reported_with_its_signal(server: Server) -> None:
    work = Path(server.request("run-1", token())["work_dir"])
    pid = server.read()["pid"]
    poll_until(lambda: seen(work), message="the child to start")
    os.killpg(pid, signal.SIGTERM)
    assert server.read() == {"op": "exited", "pid": pid, "code": -signal.SIGTERM}


def test_a_parsed_request_points_at_its_token_and_does_not_hold_it() -> None:
    body = bytearray(b'{"op": "run", "run_id": "r", "epoch": 1, "env": {}, "work_dir": "/w", ')
    body += b'"log_path": "/w/l"}\0mat_secret'
    request = flowzygote.parse_request(body)
    assert bytes(body[request.token_at :]) == b"mat_secret"
    assert "mat_secret" not in repr(request) and "mat_secret" not in str(vars(request))
