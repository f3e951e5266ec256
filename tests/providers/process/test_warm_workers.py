"""Warm step workers of the process provider (integration: real worker processes).

Reuse is proven by the worker pid that each warm attempt's handle records (and the step itself
reports), never by timing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from providers.base import ExecutionSpec, Handle, LogRecord, Outcome
from providers.process import ProcessProvider
from providers.process.proctree import read_stat
from providers.testing import ProviderConformance, Session
from tests.support.deadlines import DEADLINE_S
from tests.support.polling import apoll_until

STEPS = '''\
import os
import signal
import sys
import threading
import time

COUNT = 0
BLOB = None


def who():
    """The interpreter's pid and how many steps of this module it ran."""
    global COUNT
    COUNT += 1
    return {"pid": os.getpid(), "count": COUNT}


def speak(word):
    print(f"out {word}", flush=True)
    print(f"err {word}", file=sys.stderr, flush=True)
    sys.stdout.write(f"unflushed {word}\\n")
    return word


def look(*names):
    seen = {name: os.environ.get(name) for name in names}
    seen["cwd"] = os.getcwd()
    seen["sigterm_default"] = signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    return seen


def pollute():
    seen = look("STEP_SECRET", "OPT")
    os.environ["LEAKED"] = "1"
    os.chdir("/")
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return seen


def sleep_forever(marker):
    open(marker, "w").close()
    time.sleep(60)


def die(code):
    print("about to die", file=sys.stderr, flush=True)
    if code < 0:
        os.kill(os.getpid(), -code)
    os._exit(code)


def leak_thread():
    threading.Thread(target=time.sleep, args=(60,)).start()
    return os.getpid()


def grow(mib):
    global BLOB
    BLOB = bytearray(mib * 1024 * 1024)
    BLOB[::4096] = b"x" * len(BLOB[::4096])  # touch every page: resident, not just reserved
    return os.getpid()


def slow(seconds):
    time.sleep(seconds)
    return os.getpid()
'''

SAME_NAME = """\
import os


def which():
    return ["{label}", os.getpid()]
"""

FAST = {"kill_grace_s": 1.0}


class Harness(ProviderConformance):
    """The conformance suite's helpers (its checks are not collected: no ``Test`` prefix)."""

    def make_bundle(self, bundle_dir: Path) -> Path:
        bundle_dir.mkdir(parents=True, exist_ok=True)
        (bundle_dir / "warm_steps.py").write_text(STEPS)
        return bundle_dir

    def spec(self, bundle: Path, function: str, *args: Any, **kw: Any) -> ExecutionSpec:
        spec = self.make_spec(bundle, function, list(args))
        return replace(spec, module=kw.pop("module", "warm_steps"), **kw)


H = Harness()


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return H.make_bundle(tmp_path / "bundle")


def run(provider: ProcessProvider, scenario: Any) -> Any:
    return H.run(provider, scenario)


async def run_all(
    session: Session, provider: ProcessProvider, specs: Sequence[ExecutionSpec]
) -> list[tuple[Handle, Outcome]]:
    """Run the steps one after another."""
    done = []
    for spec in specs:
        handle = await session.submit(provider, spec)
        done.append((handle, await provider.wait(handle)))
    return done


def result(outcome: Outcome) -> Any:
    assert outcome.state == "succeeded", outcome
    return json.loads(outcome.result_json or "null")


def gone(pid: int) -> bool:
    stat = read_stat(pid)
    return stat is None or stat.state in ("Z", "X")


async def until_gone(pid: int) -> None:
    await apoll_until(lambda: gone(pid), timeout=DEADLINE_S, message=f"process {pid} still alive")


async def until_exists(path: Path) -> None:
    await apoll_until(path.exists, timeout=DEADLINE_S, message=f"{path} never appeared")


def test_worker_is_reused_for_the_next_step_of_its_bundle(bundle: Path) -> None:
    provider = ProcessProvider({**FAST, "warm_workers": 1})
    specs = [H.spec(bundle, "who"), H.spec(bundle, "who")]
    (h1, o1), (h2, o2) = run(provider, lambda s: run_all(s, provider, specs))
    assert h1.data["warm"] is True and h1.resource_id == f"pid:{h1.data['pid']}"
    assert h1.data["pid"] == h2.data["pid"]
    assert (h1.data["worker_step"], h2.data["worker_step"]) == (1, 2)
    # The step itself ran in that worker, and the module was imported once for both steps.
    assert result(o1) == {"pid": h1.data["pid"], "count": 1}
    assert result(o2) == {"pid": h1.data["pid"], "count": 2}
    assert o1.exit_code == 0


def test_output_of_each_step_goes_to_its_own_attempt(bundle: Path) -> None:
    provider = ProcessProvider({**FAST, "warm_workers": 1})
    specs = [H.spec(bundle, "speak", "one"), H.spec(bundle, "speak", "two")]

    async def scenario(session: Session) -> list[list[LogRecord]]:
        done = await run_all(session, provider, specs)
        assert done[0][0].data["pid"] == done[1][0].data["pid"]
        return [[r async for r in provider.logs(handle)] for handle, _ in done]

    first, second = run(provider, scenario)
    assert [(r.stream, r.text) for r in first] == [
        ("stdout", "out one"),
        ("stdout", "unflushed one"),
        ("stderr", "err one"),
    ]
    assert [(r.stream, r.text) for r in second] == [
        ("stdout", "out two"),
        ("stdout", "unflushed two"),
        ("stderr", "err two"),
    ]


def test_environment_secrets_cwd_and_signals_do_not_leak(bundle: Path) -> None:
    provider = ProcessProvider({**FAST, "warm_workers": 1})
    (bundle / "sub").mkdir()
    first = replace(
        H.spec(bundle, "pollute"),
        env={"STEP_SECRET": "s3cr3t"},
        options={"env": {"OPT": "o"}, "cwd": "sub"},
    )
    second = H.spec(bundle, "look", "STEP_SECRET", "OPT", "LEAKED")
    (h1, o1), (h2, o2) = run(provider, lambda s: run_all(s, provider, [first, second]))
    assert h1.data["pid"] == h2.data["pid"]
    seen = result(o1)
    assert seen["STEP_SECRET"] == "s3cr3t" and seen["OPT"] == "o"
    assert seen["cwd"] == str((bundle / "sub").resolve())
    after = result(o2)
    assert after == {
        "STEP_SECRET": None,
        "OPT": None,
        "LEAKED": None,
        "cwd": str(second.work_dir.resolve()),
        "sigterm_default": True,
    }


@pytest.mark.parametrize("how", ["timeout", "cancel"])
def test_stopped_step_replaces_its_worker(bundle: Path, tmp_path: Path, how: str) -> None:
    provider = ProcessProvider({**FAST, "warm_workers": 1})
    marker = tmp_path / "started"
    timeout = 1.0 if how == "timeout" else None
    stuck = replace(H.spec(bundle, "sleep_forever", str(marker)), timeout_s=timeout)

    async def scenario(session: Session) -> tuple[Handle, Outcome, Handle, Outcome]:
        handle = await session.submit(provider, stuck)
        await until_exists(marker)
        if how == "cancel":
            await provider.cancel(handle, 0.5)
        stopped = await provider.wait(handle)
        await until_gone(int(handle.data["pid"]))
        (after, outcome), *_ = await run_all(session, provider, [H.spec(bundle, "who")])
        return handle, stopped, after, outcome

    handle, stopped, after, outcome = run(provider, scenario)
    assert stopped.state == ("timed_out" if how == "timeout" else "cancelled")
    assert after.data["warm"] is True and after.data["pid"] != handle.data["pid"]
    assert result(outcome) == {"pid": after.data["pid"], "count": 1}


@pytest.mark.parametrize(("code", "exit_text"), [(3, "exited with code 3"), (-9, "SIGKILL")])
def test_crashing_worker_fails_only_that_attempt(bundle: Path, code: int, exit_text: str) -> None:
    provider = ProcessProvider({**FAST, "warm_workers": 2})

    async def scenario(session: Session) -> tuple[Outcome, Outcome, Handle, Outcome, Handle]:
        beside = await session.submit(provider, H.spec(bundle, "slow", 1.0))
        crashing = await session.submit(provider, H.spec(bundle, "die", code))
        assert beside.data["pid"] != crashing.data["pid"]
        crashed = await provider.wait(crashing)
        (after, outcome), *_ = await run_all(session, provider, [H.spec(bundle, "who")])
        return crashed, await provider.wait(beside), after, outcome, crashing

    crashed, kept, after, outcome, crashing = run(provider, scenario)
    assert crashed.state == "failed" and crashed.exit_code == code
    assert crashed.error is not None and crashed.error.error_class == "infrastructure"
    assert "warm worker" in crashed.error.message and exit_text in crashed.error.message
    assert "about to die" in crashed.error.message  # the step's own stderr, not another's
    assert result(kept) > 0  # the step beside it, in the other worker, finished
    assert result(outcome)["pid"] == after.data["pid"] != crashing.data["pid"]


def test_worker_recycled_after_max_steps(bundle: Path) -> None:
    provider = ProcessProvider({**FAST, "warm_workers": 1, "worker_max_steps": 2})
    specs = [H.spec(bundle, "who") for _ in range(3)]
    done = run(provider, lambda s: run_all(s, provider, specs))
    pids = [h.data["pid"] for h, _ in done]
    assert pids[0] == pids[1] != pids[2]
    assert [result(o)["count"] for _, o in done] == [1, 2, 1]


def test_worker_recycled_above_memory_limit(bundle: Path) -> None:
    provider = ProcessProvider({**FAST, "warm_workers": 1, "worker_max_rss_mib": 96})
    specs = [H.spec(bundle, "who"), H.spec(bundle, "grow", 128), H.spec(bundle, "who")]
    done = run(provider, lambda s: run_all(s, provider, specs))
    pids = [h.data["pid"] for h, _ in done]
    assert pids[0] == pids[1] != pids[2]  # under the limit it stayed; above it, replaced


def test_step_that_leaves_a_thread_retires_its_worker(bundle: Path) -> None:
    provider = ProcessProvider({**FAST, "warm_workers": 1})
    specs = [H.spec(bundle, "leak_thread"), H.spec(bundle, "who")]
    (h1, _), (h2, _) = run(provider, lambda s: run_all(s, provider, specs))
    assert h1.data["pid"] != h2.data["pid"]


def test_isolation_process_runs_a_fresh_interpreter(bundle: Path) -> None:
    provider = ProcessProvider({**FAST, "warm_workers": 1})
    specs = [
        H.spec(bundle, "who"),
        H.spec(bundle, "who", isolation="process"),
        H.spec(bundle, "who"),
    ]
    (warm, o1), (fresh, o2), (again, o3) = run(provider, lambda s: run_all(s, provider, specs))
    assert "warm" not in fresh.data and "worker_step" not in fresh.data
    assert result(o2) == {"pid": fresh.data["pid"], "count": 1}  # its own interpreter
    assert fresh.data["pid"] != warm.data["pid"] == again.data["pid"]
    assert [result(o1)["count"], result(o3)["count"]] == [1, 2]


def test_two_bundles_with_the_same_module_name_do_not_mix(tmp_path: Path) -> None:
    bundles = {}
    for label in ("A", "B"):
        bundles[label] = tmp_path / f"bundle-{label}"
        bundles[label].mkdir()
        (bundles[label] / "same_name.py").write_text(SAME_NAME.format(label=label))
    provider = ProcessProvider({**FAST, "warm_workers": 2})
    specs = [H.spec(bundles[b], "which", module="same_name") for b in "ABA"]
    done = run(provider, lambda s: run_all(s, provider, specs))
    assert [result(o)[0] for _, o in done] == ["A", "B", "A"]
    pids = [h.data["pid"] for h, _ in done]
    assert pids[0] == pids[2] != pids[1]  # each bundle keeps its own worker


def test_bundle_of_a_full_pool_recycles_an_idle_worker(tmp_path: Path) -> None:
    bundles = []
    for label in ("A", "B"):
        bundles.append(tmp_path / f"bundle-{label}")
        bundles[-1].mkdir()
        (bundles[-1] / "same_name.py").write_text(SAME_NAME.format(label=label))
    provider = ProcessProvider({**FAST, "warm_workers": 1})
    specs = [H.spec(b, "which", module="same_name") for b in bundles]
    (ha, oa), (hb, ob) = run(provider, lambda s: run_all(s, provider, specs))
    assert (result(oa)[0], result(ob)[0]) == ("A", "B")
    assert ha.data["pid"] != hb.data["pid"] and hb.data["warm"] is True


def test_busy_pool_runs_the_step_in_a_fresh_process(bundle: Path) -> None:
    provider = ProcessProvider({**FAST, "warm_workers": 1})

    async def scenario(session: Session) -> tuple[Handle, Handle, Outcome]:
        busy = await session.submit(provider, H.spec(bundle, "slow", 1.0))
        extra = await session.submit(provider, H.spec(bundle, "who"))
        outcome = await provider.wait(extra)
        await provider.wait(busy)
        return busy, extra, outcome

    busy, extra, outcome = run(provider, scenario)
    assert busy.data["warm"] is True
    assert "warm" not in extra.data
    assert result(outcome)["pid"] == extra.data["pid"]


def test_restarted_agent_collects_the_outcome_of_a_step_in_flight(bundle: Path) -> None:
    provider = ProcessProvider({**FAST, "warm_workers": 1})

    async def scenario(session: Session) -> tuple[Handle, Outcome]:
        saved = (await session.submit(provider, H.spec(bundle, "slow", 2.0))).to_json()
        await provider.close()  # the agent "restarts": the worker's input ends mid-step
        fresh = ProcessProvider({**FAST, "warm_workers": 1})
        session.providers.append(fresh)
        handle = Handle.from_json(saved)
        session.handles.append((fresh, handle))
        assert await fresh.recover(handle)
        outcome = await fresh.wait(handle)
        # Having finished its step without an agent, the worker exits (it takes no new work).
        await until_gone(int(handle.data["pid"]))
        return handle, outcome

    handle, outcome = run(provider, scenario)
    assert handle.data["warm"] is True
    assert result(outcome) == handle.data["pid"]
    assert outcome.exit_code == 0


def test_restarted_agent_enforces_the_timeout_of_a_warm_step(bundle: Path, tmp_path: Path) -> None:
    provider = ProcessProvider({**FAST, "warm_workers": 1})
    marker = tmp_path / "started"
    spec = replace(H.spec(bundle, "sleep_forever", str(marker)), timeout_s=1.0)

    async def scenario(session: Session) -> tuple[Handle, Outcome]:
        saved = (await session.submit(provider, spec)).to_json()
        await until_exists(marker)
        await provider.close()
        fresh = ProcessProvider({**FAST, "warm_workers": 1})
        session.providers.append(fresh)
        handle = Handle.from_json(saved)
        assert await fresh.recover(handle)
        outcome = await fresh.wait(handle)
        await until_gone(int(handle.data["pid"]))
        return handle, outcome

    _, outcome = run(provider, scenario)
    assert outcome.state == "timed_out"


def test_idle_workers_exit_when_the_provider_closes(bundle: Path) -> None:
    provider = ProcessProvider({**FAST, "warm_workers": 2})

    async def scenario(session: Session) -> int:
        (handle, _), *_ = await run_all(session, provider, [H.spec(bundle, "who")])
        await provider.close()
        await until_gone(int(handle.data["pid"]))
        return int(handle.data["pid"])

    assert gone(run(provider, scenario))


def test_pool_off_runs_every_step_fresh(bundle: Path) -> None:
    provider = ProcessProvider({**FAST, "warm_workers": 0})
    specs = [H.spec(bundle, "who"), H.spec(bundle, "who")]
    done = run(provider, lambda s: run_all(s, provider, specs))
    assert not any("warm" in h.data for h, _ in done)
    assert [result(o)["count"] for _, o in done] == [1, 1]


def test_worker_leads_its_own_process_group(bundle: Path) -> None:
    provider = ProcessProvider({**FAST, "warm_workers": 1})

    async def scenario(session: Session) -> Handle:
        handle = await session.submit(provider, H.spec(bundle, "slow", 0.5))
        pid = int(handle.data["pid"])
        assert os.getpgid(pid) == pid == handle.data["pgid"] != os.getpgid(0)
        await provider.wait(handle)
        return handle

    handle = run(provider, scenario)
    assert handle.data["start_time"] is not None


def test_pythonpath_of_the_step_is_on_its_import_path(tmp_path: Path, bundle: Path) -> None:
    # A fresh interpreter imports from PYTHONPATH (config or option env); so does a warm
    # worker, and steps with another PYTHONPATH (other code) never share its worker.
    libs = []
    for label in ("A", "B"):
        libs.append(tmp_path / f"lib-{label}")
        libs[-1].mkdir()
        (libs[-1] / "same_name.py").write_text(SAME_NAME.format(label=label))
    provider = ProcessProvider({**FAST, "warm_workers": 2})
    specs = [
        replace(
            H.spec(bundle, "which", module="same_name"),
            options={"env": {"PYTHONPATH": str(lib)}},
        )
        for lib in (libs[0], libs[1], libs[0])
    ]
    done = run(provider, lambda s: run_all(s, provider, specs))
    assert [result(o)[0] for _, o in done] == ["A", "B", "A"]
    assert all(h.data["warm"] is True for h, _ in done)
    pids = [h.data["pid"] for h, _ in done]
    assert pids[0] == pids[2] != pids[1]
