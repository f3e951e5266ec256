"""The agent's hosted flow runners (decision 0018) with real processes: a runner starts in
its own process group with its settings in the environment, a cancel stops the whole group,
a restarted agent re-attaches to a runner still alive, and every exit is reported.

Each case runs twice: with runners as fresh processes, and forked by the fork server (a real
``meridian.flowzygote`` whose children run the same stand-in runner); plus the fork server's own
failures: killed mid-run, or not up at all."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from agent import flowrunners, forkserver
from agent.actions import AssignRunnerAction, CancelRunnerAction
from agent.flowrunners import STATE_FILE, FlowRunners, process_start_time
from agent.forkserver import ForkServerClient, ForkUncertain
from tests.support.polling import apoll_until

# A stand-in for meridian.flowexec: records its environment, starts a grandchild in its
# group, and lives until it is signalled (or until "stop" exists).
RUNNER = """
import json, os, subprocess, sys, time
from pathlib import Path
work = Path(os.environ["TEST_WORK"])
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
(work / "seen.json").write_text(json.dumps({
    "argv": sys.argv, "pid": os.getpid(), "pgid": os.getpgid(0), "child": child.pid,
    "ppid": os.getppid(),
    "env": {k: v for k, v in os.environ.items() if k.startswith("MERIDIAN_FLOWEXEC_")},
}))
while not (work / "stop").exists():
    time.sleep(0.05)
sys.exit(int((work / "stop").read_text() or 0))
"""

# The fork server with the stand-in as what each child runs (instead of meridian.flowexec).
FORK_SERVER = """
import runpy, sys
from meridian import flowzygote

def entry():
    runpy.run_path(sys.argv[1], run_name="__main__")
    return 0

flowzygote.main(entry=entry)
"""


@pytest.fixture(params=["fresh", "forked"])
def forked(request: pytest.FixtureRequest) -> bool:
    return bool(request.param == "forked")


def assign(epoch: int = 1) -> AssignRunnerAction:
    return AssignRunnerAction(
        "run-1", epoch, "a" * 64, "flows.py:etl", "mat_secret", ":7000", b"CA"
    )


def runners(
    tmp_path: Path,
    sent: list[tuple[str, int, int, str]],
    forked: bool = False,
    fork_server: tuple[str, ...] = (),
    slots: int = 1,
) -> FlowRunners:
    """One runner slot (``slots``); ``forked``: with the fork server (``fork_server``: its
    command)."""
    bundle = tmp_path / "bundle"
    bundle.mkdir(exist_ok=True)

    async def bundle_dir(sha256: str) -> Path:
        return bundle

    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    server = tmp_path / "fork_server.py"
    server.write_text(FORK_SERVER)
    env = {**os.environ, "TEST_WORK": str(tmp_path)}
    return FlowRunners(
        slots,
        tmp_path / "data",
        bundle_dir,
        "10.0.0.5",
        env=env,
        command=(sys.executable, str(script)),
        fork_server=forked,
        fork_server_command=fork_server or (sys.executable, str(server), str(script)),
        environment="dc1",
    )


async def started(fr: FlowRunners, send: flowrunners.SendFrame, forked: bool) -> None:
    """Start ``fr``; with the fork server, wait until it is up (else runners start fresh)."""
    await fr.start(send)
    if forked:
        await apoll_until(fr.fork_server_pid, message="the fork server to be up")


def assert_started_as(info: dict, fr: FlowRunners, forked: bool) -> None:  # type: ignore[type-arg]
    if forked:
        assert info["ppid"] == fr.fork_server_pid()
    else:
        assert info["ppid"] == os.getpid()


def sender(sent: list[tuple[str, int, int, str]]):  # type: ignore[no-untyped-def]
    async def send(run_id: str, epoch: int, code: int, message: str) -> None:
        sent.append((run_id, epoch, code, message))

    return send


def seen(tmp_path: Path) -> dict:  # type: ignore[type-arg]
    try:
        return json.loads((tmp_path / "seen.json").read_text())
    except (OSError, ValueError):  # not yet written, or being written
        return {}


def alive(pid: int) -> bool:
    return process_start_time(pid) is not None


async def _a_runner_starts_in_its_own_group_with_its_settings_in_the_environment(
    tmp_path: Path, forked: bool
) -> None:
    sent: list[tuple[str, int, int, str]] = []
    fr = runners(tmp_path, sent, forked)
    await started(fr, sender(sent), forked)
    fr.handle(assign())
    await apoll_until(lambda: seen(tmp_path), message="the runner to start")
    info = seen(tmp_path)
    assert_started_as(info, fr, forked)
    assert info["pgid"] == info["pid"] != os.getpgid(0)
    assert "mat_secret" not in " ".join(info["argv"])  # never on the command line
    env = info["env"]
    assert env["MERIDIAN_FLOWEXEC_TOKEN"] == "mat_secret"
    assert env["MERIDIAN_FLOWEXEC_ADDRESS"] == "10.0.0.5:7000"
    assert env["MERIDIAN_FLOWEXEC_EPOCH"] == "1"
    assert env["MERIDIAN_FLOWEXEC_ENVIRONMENT"] == "dc1"  # meridian.context().environment
    assert Path(env["MERIDIAN_FLOWEXEC_CA_FILE"]).read_bytes() == b"CA"
    assert fr.held() == (("run-1", 1),)
    (tmp_path / "stop").write_text("3")
    await apoll_until(lambda: sent, message="the exit to be reported")
    assert sent[0][:3] == ("run-1", 1, 3)
    assert fr.held() == ()
    await fr.close()
    os.kill(info["child"], signal.SIGKILL)


async def _cancel_stops_the_runners_whole_group(tmp_path: Path, forked: bool) -> None:
    sent: list[tuple[str, int, int, str]] = []
    fr = runners(tmp_path, sent, forked)
    await started(fr, sender(sent), forked)
    fr.handle(assign())
    await apoll_until(lambda: seen(tmp_path), message="the runner to start")
    info = seen(tmp_path)
    assert_started_as(info, fr, forked)
    fr.handle(CancelRunnerAction("run-1", 1, "cancelled by a person", 1.0))
    await apoll_until(lambda: sent, message="the exit to be reported")
    assert sent[0][2] == -signal.SIGTERM
    await apoll_until(lambda: not alive(info["child"]), message="the grandchild to end")
    await fr.close()


async def _a_restarted_agent_re_attaches_to_a_living_runner(tmp_path: Path, forked: bool) -> None:
    sent: list[tuple[str, int, int, str]] = []
    first = runners(tmp_path, sent, forked)
    await started(first, sender(sent), forked)
    first.handle(assign())
    await apoll_until(lambda: seen(tmp_path), message="the runner to start")
    await apoll_until(lambda: (tmp_path / "data" / STATE_FILE).exists(), message="state saved")
    await first.close()  # the agent stops; its runner goes on
    pid = seen(tmp_path)["pid"]
    assert alive(pid)

    again = runners(tmp_path, sent, forked)
    await started(again, sender(sent), forked)
    assert again.held() == (("run-1", 1),)
    assert sent == []
    (tmp_path / "stop").write_text("0")
    await apoll_until(lambda: sent, message="the end of the re-attached runner to be reported")
    assert sent[0][:3] == ("run-1", 1, -1)  # not our child: its exit code is unknown
    assert again.held() == ()
    await again.close()
    os.kill(seen(tmp_path)["child"], signal.SIGKILL)


async def _a_runner_that_died_while_the_agent_was_down_is_reported(
    tmp_path: Path, forked: bool
) -> None:
    sent: list[tuple[str, int, int, str]] = []
    first = runners(tmp_path, sent, forked)
    await started(first, sender(sent), forked)
    first.handle(assign())
    await apoll_until(lambda: seen(tmp_path), message="the runner to start")
    await apoll_until(lambda: (tmp_path / "data" / STATE_FILE).exists(), message="state saved")
    await first.close()
    os.killpg(seen(tmp_path)["pid"], signal.SIGKILL)
    await apoll_until(lambda: not alive(seen(tmp_path)["pid"]), message="the runner to die")
    again = runners(tmp_path, sent, forked)
    await started(again, sender(sent), forked)
    await apoll_until(lambda: sent, message="the report")
    assert sent[0][:3] == ("run-1", 1, -1) and again.held() == ()
    await again.close()
    assert not alive(seen(tmp_path)["child"])  # the whole group was killed


def test_a_runner_starts_in_its_own_group_with_its_settings_in_the_environment(
    tmp_path: Path, forked: bool
) -> None:
    asyncio.run(
        _a_runner_starts_in_its_own_group_with_its_settings_in_the_environment(tmp_path, forked)
    )


def test_cancel_stops_the_runners_whole_group(tmp_path: Path, forked: bool) -> None:
    asyncio.run(_cancel_stops_the_runners_whole_group(tmp_path, forked))


def test_a_restarted_agent_re_attaches_to_a_living_runner(tmp_path: Path, forked: bool) -> None:
    asyncio.run(_a_restarted_agent_re_attaches_to_a_living_runner(tmp_path, forked))


def test_a_runner_that_died_while_the_agent_was_down_is_reported(
    tmp_path: Path, forked: bool
) -> None:
    asyncio.run(_a_runner_that_died_while_the_agent_was_down_is_reported(tmp_path, forked))


def assign_run(run_id: str) -> AssignRunnerAction:
    return AssignRunnerAction(run_id, 1, "a" * 64, "flows.py:etl", "mat_secret", ":7000", b"CA")


async def _an_assignment_waits_for_a_runner_that_is_exiting(tmp_path: Path, forked: bool) -> None:
    # The control plane frees a finished run's slot a moment before its runner has exited
    # here: the next run must wait for the slot, not be refused (and counted as a lost runner).
    sent: list[tuple[str, int, int, str]] = []
    fr = runners(tmp_path, sent, forked)  # one runner slot
    await started(fr, sender(sent), forked)
    fr.handle(assign_run("run-1"))
    await apoll_until(lambda: seen(tmp_path).get("pid"), message="the first runner to start")
    fr.handle(assign_run("run-2"))  # no slot free yet
    fr.handle(assign_run("run-2"))  # redelivered while it waits: still one runner
    await asyncio.sleep(0.3)
    assert [r for r, _ in fr.held()] == ["run-1"]
    assert sent == []
    (tmp_path / "stop").write_text("0")  # run-1 ends; run-2 starts, sees "stop", ends
    await apoll_until(lambda: len(sent) == 2, message="both runners to exit")
    assert sorted((run, code) for run, _, code, _ in sent) == [("run-1", 0), ("run-2", 0)]
    await fr.close()


async def _an_assignment_is_refused_when_no_slot_frees_in_time(
    tmp_path: Path, forked: bool
) -> None:
    sent: list[tuple[str, int, int, str]] = []
    fr = runners(tmp_path, sent, forked)
    await started(fr, sender(sent), forked)
    fr.handle(assign_run("run-1"))
    await apoll_until(lambda: seen(tmp_path).get("pid"), message="the first runner to start")
    fr.handle(assign_run("run-2"))
    await apoll_until(lambda: sent, message="the refusal")
    [(run, _, code, message)] = sent
    assert (run, code) == ("run-2", -2) and "no free runner slot" in message
    assert [r for r, _ in fr.held()] == ["run-1"]
    (tmp_path / "stop").write_text("0")
    await apoll_until(lambda: len(sent) == 2, message="the first runner to exit")
    await fr.close()


def test_an_assignment_waits_for_a_runner_that_is_exiting(tmp_path: Path, forked: bool) -> None:
    asyncio.run(_an_assignment_waits_for_a_runner_that_is_exiting(tmp_path, forked))


def test_an_assignment_is_refused_when_no_slot_frees_in_time(
    tmp_path: Path, forked: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(flowrunners, "SLOT_WAIT_S", 0.3)
    asyncio.run(_an_assignment_is_refused_when_no_slot_frees_in_time(tmp_path, forked))


async def _concurrent_saves_leave_the_newest_state(tmp_path: Path) -> None:
    fr = runners(tmp_path, [])
    saves = []
    for n in range(30):
        fr._exits.append(flowrunners.RunnerExit(f"run-{n}", 1, 0, ""))
        # Each save snapshots now and writes on a thread: started together, they may
        # finish in any order, and an older snapshot must not land over a newer one.
        saves += [asyncio.ensure_future(fr._save()) for _ in range(3)]
        await asyncio.sleep(0)
    await asyncio.gather(*saves)
    state = json.loads((tmp_path / "data" / flowrunners.STATE_FILE).read_text())
    assert len(state["exits"]) == 30


def test_concurrent_saves_leave_the_newest_state(tmp_path: Path) -> None:
    asyncio.run(_concurrent_saves_leave_the_newest_state(tmp_path))


async def _a_runner_outlives_its_killed_fork_server_and_its_end_is_reported(
    tmp_path: Path,
) -> None:
    sent: list[tuple[str, int, int, str]] = []
    fr = runners(tmp_path, sent, forked=True)
    await started(fr, sender(sent), True)
    server = fr.fork_server_pid()
    assert server is not None
    fr.handle(assign())
    await apoll_until(lambda: seen(tmp_path), message="the runner to start")
    info = seen(tmp_path)
    assert info["ppid"] == server
    os.kill(server, signal.SIGKILL)
    await apoll_until(
        lambda: fr.fork_server_pid() not in (None, server), message="the fork server's restart"
    )
    assert alive(info["pid"]) and fr.held() == (("run-1", 1),) and sent == []
    (tmp_path / "stop").write_text("0")
    await apoll_until(lambda: sent, message="the runner's end to be reported")
    assert sent[0][:3] == ("run-1", 1, -1)  # the server that knew its exit code is gone
    assert fr.held() == ()
    await fr.close()
    os.kill(info["child"], signal.SIGKILL)


async def _assignments_start_fresh_processes_while_the_fork_server_is_down(
    tmp_path: Path,
) -> None:
    sent: list[tuple[str, int, int, str]] = []
    broken = (sys.executable, "-c", "raise SystemExit(1)")  # dies before it is ever up
    fr = runners(tmp_path, sent, forked=True, fork_server=broken)
    await fr.start(sender(sent))
    fr.handle(assign())
    await apoll_until(lambda: seen(tmp_path), message="the runner to start")
    info = seen(tmp_path)
    assert info["ppid"] == os.getpid() and fr.fork_server_pid() is None
    assert info["env"]["MERIDIAN_FLOWEXEC_TOKEN"] == "mat_secret"
    (tmp_path / "stop").write_text("4")
    await apoll_until(lambda: sent, message="the exit to be reported")
    assert sent[0][:3] == ("run-1", 1, 4)
    await fr.close()
    os.kill(info["child"], signal.SIGKILL)


# A fork server that takes a request and dies without answering: did it fork or not?
SILENT_SERVER = """
import json, os, struct
ready = json.dumps({"op": "ready", "pid": os.getpid()}).encode()
os.write(1, struct.pack(">I", len(ready)) + ready)
(size,) = struct.unpack(">I", os.read(0, 4))
got = 0
while got < size:
    got += len(os.read(0, size - got))
os._exit(1)
"""


async def _a_request_the_fork_server_took_and_never_answered_starts_no_second_runner(
    tmp_path: Path,
) -> None:
    # A fresh process now could be a second runner of the same epoch: the runner is reported
    # as not started instead (the control plane moves the run to its next epoch).
    sent: list[tuple[str, int, int, str]] = []
    script = tmp_path / "silent.py"
    script.write_text(SILENT_SERVER)
    fr = runners(tmp_path, sent, forked=True, fork_server=(sys.executable, str(script)))
    await started(fr, sender(sent), True)
    fr.handle(assign())
    await apoll_until(lambda: sent, message="the runner to be reported")
    [(run, epoch, code, message)] = sent
    assert (run, epoch, code) == ("run-1", 1, -3) and "fork server" in message
    assert fr.held() == () and seen(tmp_path) == {}
    await fr.close()


def test_a_request_the_fork_server_took_and_never_answered_starts_no_second_runner(
    tmp_path: Path,
) -> None:
    asyncio.run(
        _a_request_the_fork_server_took_and_never_answered_starts_no_second_runner(tmp_path)
    )


def test_a_runner_outlives_its_killed_fork_server_and_its_end_is_reported(
    tmp_path: Path,
) -> None:
    asyncio.run(_a_runner_outlives_its_killed_fork_server_and_its_end_is_reported(tmp_path))


def test_assignments_start_fresh_processes_while_the_fork_server_is_down(tmp_path: Path) -> None:
    asyncio.run(_assignments_start_fresh_processes_while_the_fork_server_is_down(tmp_path))


# A fork server that answers each request only once the test writes "answer" in its work dir
# (the runner it then starts is the stand-in runner, as a child of this server): a fork round
# trip the test holds open. It records each request it got as "got-<epoch>".
DELAYED_SERVER = """
import json, os, struct, subprocess, sys, time
from pathlib import Path
work, runner = Path(sys.argv[1]), sys.argv[2]

def send(message):
    body = json.dumps(message).encode()
    os.write(1, struct.pack(">I", len(body)) + body)

def read(size):
    data = b""
    while len(data) < size:
        chunk = os.read(0, size - len(data))
        if not chunk:
            sys.exit(0)
        data += chunk
    return data

send({"op": "ready", "pid": os.getpid()})
while True:
    (size,) = struct.unpack(">I", read(4))
    request = json.loads(read(size).split(b"\\0")[0])
    (work / f"got-{request['epoch']}").write_text(request["run_id"])
    deadline = time.monotonic() + 20
    while not (work / "answer").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    (work / "answer").unlink()
    child = subprocess.Popen([sys.executable, runner], start_new_session=True)
    send({"op": "started", "run_id": request["run_id"], "epoch": request["epoch"],
          "pid": child.pid})
"""


def delayed_server(tmp_path: Path) -> tuple[str, ...]:
    script = tmp_path / "delayed.py"
    script.write_text(DELAYED_SERVER)
    return (sys.executable, str(script), str(tmp_path), str(tmp_path / "runner.py"))


def end_runner(tmp_path: Path) -> None:
    """Stop the stand-in runner and its grandchild (also when a test failed midway)."""
    (tmp_path / "stop").write_text("0")
    info = seen(tmp_path)
    for pid in (info.get("child"), info.get("pid")):
        if pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


async def _a_frame_redelivered_while_its_runner_is_forked_starts_nothing(
    tmp_path: Path,
) -> None:
    # Two free slots: the redelivered frame finds a slot, and the fork server already has the
    # first delivery's request. Starting a fresh process would be a second runner of the epoch.
    sent: list[tuple[str, int, int, str]] = []
    fr = runners(tmp_path, sent, forked=True, fork_server=delayed_server(tmp_path), slots=2)
    await started(fr, sender(sent), True)
    try:
        fr.handle(assign())
        await apoll_until(lambda: (tmp_path / "got-1").exists(), message="the fork request")
        # The redelivered frame, handled to its end (its task would be fire-and-forget).
        await asyncio.wait_for(fr._assign(assign()), 30)
        assert fr.held() == () and seen(tmp_path) == {}
        (tmp_path / "answer").write_text("")
        await apoll_until(lambda: fr.held() == (("run-1", 1),), message="the forked runner")
        info = await apoll_until(lambda: seen(tmp_path), message="the runner to start")
        assert info["ppid"] == fr.fork_server_pid()
        assert sent == []
    finally:
        end_runner(tmp_path)
        await fr.close()


async def _a_newer_epoch_waits_for_the_older_being_forked_and_replaces_it(
    tmp_path: Path,
) -> None:
    sent: list[tuple[str, int, int, str]] = []
    fr = runners(tmp_path, sent, forked=True, fork_server=delayed_server(tmp_path), slots=2)
    await started(fr, sender(sent), True)
    try:
        fr.handle(assign(1))
        await apoll_until(lambda: (tmp_path / "got-1").exists(), message="epoch 1's request")
        fr.handle(assign(2))  # the run moved on while epoch 1 is being forked
        fr.handle(assign(1))  # and epoch 1's frame comes again: superseded, nothing starts
        (tmp_path / "answer").write_text("")
        await apoll_until(lambda: (tmp_path / "got-2").exists(), message="epoch 2's request")
        # Epoch 1's runner was started and recorded, then stopped before epoch 2 was forked.
        state = json.loads((tmp_path / "data" / STATE_FILE).read_text())
        [first] = state["runners"]
        assert (first["flow_run_id"], first["epoch"]) == ("run-1", 1)
        assert not alive(first["pid"])
        with contextlib.suppress(FileNotFoundError):
            (tmp_path / "seen.json").unlink()
        (tmp_path / "answer").write_text("")
        await apoll_until(lambda: fr.held() == (("run-1", 2),), message="epoch 2's runner")
        await apoll_until(lambda: seen(tmp_path), message="epoch 2's runner to start")
        assert not (tmp_path / "got-3").exists()
    finally:
        end_runner(tmp_path)
        await fr.close()


async def _a_runner_forked_while_the_agent_stops_is_recorded(tmp_path: Path) -> None:
    # The agent stops (its tasks are cancelled) while the fork server is forking a runner:
    # that runner must be in the state file, so a restarted agent re-attaches to it.
    sent: list[tuple[str, int, int, str]] = []
    fr = runners(tmp_path, sent, forked=True, fork_server=delayed_server(tmp_path))
    await started(fr, sender(sent), True)
    again: FlowRunners | None = None
    try:
        fr.handle(assign())
        await apoll_until(lambda: (tmp_path / "got-1").exists(), message="the fork request")
        closing = asyncio.ensure_future(fr.close())
        await asyncio.sleep(0)  # close has cancelled the assignment; now the server answers
        (tmp_path / "answer").write_text("")
        await closing
        info = await apoll_until(lambda: seen(tmp_path), message="the runner to start")
        state = json.loads((tmp_path / "data" / STATE_FILE).read_text())
        assert [(r["flow_run_id"], r["pid"]) for r in state["runners"]] == [("run-1", info["pid"])]
        again = runners(tmp_path, sent)
        await again.start(sender(sent))
        assert again.held() == (("run-1", 1),)
        (tmp_path / "stop").write_text("0")
        await apoll_until(lambda: sent, message="the re-attached runner's end")
        assert sent[0][:3] == ("run-1", 1, -1)
    finally:
        end_runner(tmp_path)
        if again is not None:
            await again.close()


def test_a_frame_redelivered_while_its_runner_is_forked_starts_nothing(tmp_path: Path) -> None:
    asyncio.run(_a_frame_redelivered_while_its_runner_is_forked_starts_nothing(tmp_path))


def test_a_newer_epoch_waits_for_the_older_being_forked_and_replaces_it(tmp_path: Path) -> None:
    asyncio.run(_a_newer_epoch_waits_for_the_older_being_forked_and_replaces_it(tmp_path))


def test_a_runner_forked_while_the_agent_stops_is_recorded(tmp_path: Path) -> None:
    asyncio.run(_a_runner_forked_while_the_agent_stops_is_recorded(tmp_path))


# ---- the fork server's client on its own --------------------------------------------------

# A fork server that is up and then neither reads nor answers, nor exits at end of input.
STUCK_SERVER = """
import json, os, struct, time
ready = json.dumps({"op": "ready", "pid": os.getpid()}).encode()
os.write(1, struct.pack(">I", len(ready)) + ready)
time.sleep(600)
"""


def client_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MERIDIAN_FLOWEXEC_")}


async def up_client(command: tuple[str, ...]) -> ForkServerClient:
    client = ForkServerClient(command, client_env())
    client.start()
    await apoll_until(lambda: client.up, message="the fork server to be up")
    return client


async def _a_request_waiting_to_be_written_is_not_timed_out(tmp_path: Path) -> None:
    # The reply deadline starts once a request is written: waiting behind other requests (a
    # burst) is not the server's silence, and must not get it killed.
    quick = tmp_path / "quick.py"
    quick.write_text("import sys; sys.exit(5)")
    server = tmp_path / "fork_server.py"
    server.write_text(FORK_SERVER)
    client = await up_client((sys.executable, str(server), str(quick)))
    pid = client.pid
    work = tmp_path / "work"
    work.mkdir()
    try:
        async with client._write_lock:  # an earlier request is being written, a long time
            request = asyncio.ensure_future(
                client.fork("run-1", 1, client_env(), str(work), str(work / "log"), "mat_x")
            )
            await asyncio.sleep(3 * forkserver.REPLY_TIMEOUT_S)
            assert not request.done()
        forked = await request
        assert forked is not None and await forked.exit_code == 5
        assert client.up and client.pid == pid
    finally:
        await client.close()


async def stuck_client(tmp_path: Path) -> ForkServerClient:
    """A client of a fork server that reads requests and never answers nor exits."""
    script = tmp_path / "stuck.py"
    script.write_text(STUCK_SERVER)
    return await up_client((sys.executable, str(script)))


async def _a_server_that_fell_silent_is_down_at_once(tmp_path: Path) -> None:
    # After a timeout the server is killed: the next request must not be written to it (it
    # would be "uncertain" too, a lost runner) but start fresh.
    client = await stuck_client(tmp_path)
    work = str(tmp_path)
    try:
        with pytest.raises(ForkUncertain):
            await client.fork("run-1", 1, client_env(), work, work + "/log", "mat_x")
        assert not client.up and client.pid is None
        assert await client.fork("run-2", 1, client_env(), work, work + "/log", "mat_x") is None
    finally:
        await client.close()


async def _close_kills_a_server_that_does_not_exit(tmp_path: Path) -> None:
    client = await stuck_client(tmp_path)
    pid = client.pid
    assert pid is not None
    try:
        await client.close()
        assert process_start_time(pid) is None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_a_request_waiting_to_be_written_is_not_timed_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(forkserver, "REPLY_TIMEOUT_S", 0.2)
    asyncio.run(_a_request_waiting_to_be_written_is_not_timed_out(tmp_path))


def test_a_server_that_fell_silent_is_down_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(forkserver, "REPLY_TIMEOUT_S", 0.2)
    monkeypatch.setattr(forkserver, "CLOSE_TIMEOUT_S", 0.2, raising=False)
    asyncio.run(_a_server_that_fell_silent_is_down_at_once(tmp_path))


def test_close_kills_a_server_that_does_not_exit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(forkserver, "REPLY_TIMEOUT_S", 0.2)
    monkeypatch.setattr(forkserver, "CLOSE_TIMEOUT_S", 0.2, raising=False)
    asyncio.run(_close_kills_a_server_that_does_not_exit(tmp_path))
