"""Soak: thousands of small steps across four agents while a chaos loop SIGKILLs and restarts
agents (and now and then the control plane); then every run's recorded history is checked.

Run it (excluded from the default suite by the ``slow`` marker)::

    MERIDIAN_SOAK_SECONDS=180 .venv/bin/pytest -m slow tests/faults/test_soak.py -s

``MERIDIAN_SOAK_SECONDS`` (default 180) is how long new runs keep being started and the chaos
loop keeps killing; the runs still in flight then get up to 5 minutes to finish. ``-s`` shows
the table of invariants checked and their counts.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.faults.invariants import TERMINAL_ATTEMPT_EVENTS, check_history
from tests.integration.harness import Estate
from tests.support.deadlines import DEADLINE_S

FLOWS = Path(__file__).resolve().parent / "flows" / "net_flows.py"
SOAK_S = float(os.environ.get("MERIDIAN_SOAK_SECONDS", "180"))
SEED = int(os.environ.get("MERIDIAN_SOAK_SEED", str(int(time.time()))))
AGENTS = 4
CAPACITY = 4
LANES = 3  # flow runs in flight at once
BATCH = 40  # steps per run (one .map)
LOST_AFTER_S = 4.0  # the control plane's default; the soak step says 4s as well
RUN_TIMEOUT_S = 300.0
TERMINAL_RUNS = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}


@dataclass
class Chaos:
    agent_kills: int = 0
    quick_restarts: int = 0  # back within lost_after: should re-attach
    slow_restarts: int = 0  # back after lost_after: attempts lost and retried
    server_kills: int = 0
    log: list[str] = field(default_factory=list)


@dataclass
class Lane:
    exits: dict[str, int] = field(default_factory=dict)  # lane tag of each run -> exit code
    hung: int = 0
    hung_logs: dict[str, Path] = field(default_factory=dict)  # lane tag -> its runner's output


def run_lane(
    estate: Estate, work: Path, index: int, deadline: float, lane: Lane, server_up: threading.Event
) -> None:
    """Start one batch after another until the deadline; each waits for its runner.

    A new `meridian run` refuses to start while the control plane is down (it cannot create
    the run), so lanes start runners only while it is up; one started just before a kill may
    still fail that way, which the final check tells apart by the run not existing.
    """
    k = 0
    while time.monotonic() < deadline:
        server_up.wait(timeout=DEADLINE_S)
        tag = f"lane{index}-run{k}"
        k += 1
        runner = estate.run_background(
            FLOWS, "soak_batch", f"work={work}", f"lane={tag}", f"n={BATCH}", "pause_s=0.05"
        )
        try:
            lane.exits[tag] = runner.wait(timeout=RUN_TIMEOUT_S)
        except Exception:
            runner.kill()
            runner.wait(timeout=DEADLINE_S)
            lane.hung += 1
            log = estate.cli_log(runner)
            if log is not None:
                lane.hung_logs[tag] = log
        if lane.exits.get(tag):
            time.sleep(1.0)


def chaos_loop(
    estate: Estate,
    labels: dict[str, str],
    deadline: float,
    chaos: Chaos,
    server_up: threading.Event,
) -> None:
    rng = random.Random(SEED)
    names = sorted(estate.agents)
    events = 0
    while time.monotonic() < deadline:
        time.sleep(rng.uniform(2.0, 6.0))
        events += 1
        if events % 6 == 3:  # every sixth blow hits the control plane
            server_up.clear()
            estate.kill_server()
            down = rng.uniform(0.5, 3.0)
            time.sleep(down)
            estate.restart_server()
            server_up.set()
            chaos.server_kills += 1
            chaos.log.append(f"control plane killed, down {down:.1f}s")
            continue
        name = rng.choice(names)
        estate.kill_agent(name)
        chaos.agent_kills += 1
        down = rng.choice([rng.uniform(0.2, 2.0), rng.uniform(LOST_AFTER_S + 1, 10.0)])
        time.sleep(down)
        if down < LOST_AFTER_S:
            chaos.quick_restarts += 1
        else:
            chaos.slow_restarts += 1
        estate.start_agent(name, name, labels, capacity=CAPACITY)
        chaos.log.append(f"{name} killed, down {down:.1f}s")


def describe_hung(lanes: list[Lane], details: list[Any]) -> str:
    """What a hung runner's run looked like: its state, its steps' states, the last events of
    the steps that did not end, and the end of the runner's own output."""
    by_tag = {json.loads(d.parameters_json)["lane"]: d for d in details}
    out: list[str] = []
    for lane in lanes:
        for tag, log in lane.hung_logs.items():
            detail = by_tag.get(tag)
            if detail is None:
                out.append(f"{tag}: no run stored")
            else:
                states = Counter(step.state for step in detail.steps)
                out.append(f"{tag}: run {detail.flow_run_id} {detail.state}, steps {dict(states)}")
                open_steps = [s for s in detail.steps if s.state not in ("COMPLETED", "FAILED")]
                for step in open_steps[:3]:
                    events = [e for e in detail.events if e.step_key == step.key][-6:]
                    out.append(f"  {step.key} {step.state}:")
                    out.extend(f"    {e.kind} {e.message[:160]}" for e in events)
            with contextlib.suppress(OSError):
                out.append("  runner output (end): " + log.read_text(errors="replace")[-1500:])
    return "\n".join(out)


def executions(work: Path) -> dict[tuple[str, str], int]:
    """(lane tag, step key) -> how many times the step's code started."""
    counts: Counter[tuple[str, str]] = Counter()
    for path in work.glob("*.starts"):
        for line in path.read_text().splitlines():
            tag, key, _pid = line.split()
            counts[(tag, key)] += 1
    return dict(counts)


@pytest.mark.slow
@pytest.mark.timeout(SOAK_S + RUN_TIMEOUT_S + 300)
def test_soak_random_agent_and_control_plane_kills(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    estate = Estate(
        tmp_path / "estate", lost_after_s=LOST_AFTER_S, heartbeat_s=0.5, runner_grace_s=60.0
    ).start()
    labels = {"pool": "soak"}
    chaos, lanes = Chaos(), [Lane() for _ in range(LANES)]
    server_up = threading.Event()
    server_up.set()
    began = time.monotonic()
    try:
        for i in range(AGENTS):
            estate.add_agent(f"soak-{i}", labels, capacity=CAPACITY, name=f"soak-{i}")
        deadline = time.monotonic() + SOAK_S
        threads = [
            threading.Thread(
                target=run_lane,
                args=(estate, work, i, deadline, lanes[i], server_up),
                daemon=True,
            )
            for i in range(LANES)
        ]
        for t in threads:
            t.start()
        chaos_loop(estate, labels, deadline, chaos, server_up)
        for t in threads:  # runs in flight finish on a healthy estate
            t.join(timeout=RUN_TIMEOUT_S + 60)
        assert not any(t.is_alive() for t in threads), "a lane never finished"
        report = check_everything(estate, work, chaos, lanes, time.monotonic() - began)
        print(report)
    except BaseException:
        print(f"seed {SEED}; chaos: {chaos.log}")
        print(estate.logs())
        raise
    finally:
        estate.stop()


def check_everything(
    estate: Estate, work: Path, chaos: Chaos, lanes: list[Lane], elapsed: float
) -> str:
    with estate.client() as client:
        summaries = client.list_runs(limit=1000, flow_name="soak_batch")
        details = [client.get_run(s.flow_run_id) for s in summaries]
    assert not any(lane.hung for lane in lanes), "a flow runner never exited:\n" + describe_hung(
        lanes, details
    )
    exits = {tag: code for lane in lanes for tag, code in lane.exits.items()}
    recorded = {json.loads(d.parameters_json)["lane"] for d in details}
    assert len(recorded) == len(details), "two runs for one runner"
    # Every runner that exited 0 has its run; a runner that failed either never created a
    # run (refused while the control plane was down) or its run must still end below.
    assert {t for t, code in exits.items() if code == 0} <= recorded
    refused = {t for t, code in exits.items() if code != 0 and t not in recorded}
    assert recorded <= set(exits), "a run nobody started"

    ran = executions(work)
    states: Counter[str] = Counter()
    per_step: Counter[str] = Counter()  # "ran once", "ran twice", ...
    n_steps = n_attempts = n_lost = n_retries = n_rejected = n_ignored_dupes = 0
    for detail in details:
        states[detail.state] += 1
        assert detail.state in TERMINAL_RUNS, f"{detail.flow_run_id} is still {detail.state}"
        check_history(detail)
        tag = json.loads(detail.parameters_json)["lane"]
        if detail.state == "COMPLETED":
            assert json.loads(detail.result_json) == sum(i * i for i in range(BATCH))
            assert len(detail.steps) == BATCH
        n_rejected += sum(1 for e in detail.events if e.kind == "report.rejected")
        for step in detail.steps:
            n_steps += 1
            n_attempts += len(step.attempts)
            n_retries += len(step.attempts) - 1
            n_lost += sum(1 for a in step.attempts if a.state == "LOST")
            results = [
                e for e in detail.events if e.kind == "step.completed" and e.step_key == step.key
            ]
            assert len(results) == (1 if step.state == "COMPLETED" else 0), step.key
            count = ran.get((tag, step.key), 0)
            started_attempts = [a for a in step.attempts if a.started_at is not None]
            # At least once: a completed step ran; never more often than it had attempts that
            # were allowed to start (a re-attached attempt is not run again).
            if step.state == "COMPLETED":
                assert count >= 1, f"{tag} {step.key} completed without running"
            assert count <= len(started_attempts), (tag, step.key, count, step.attempts)
            per_step[f"ran {count}x"] += 1
        ended = Counter(e.attempt_id for e in detail.events if e.kind in TERMINAL_ATTEMPT_EVENTS)
        n_ignored_dupes += sum(n - 1 for n in ended.values())
    assert states == Counter({"COMPLETED": len(details)}), states

    return "\n".join(
        [
            f"soak: {elapsed:.0f}s (new runs for {SOAK_S:.0f}s), seed {SEED}, {AGENTS} agents x "
            f"{CAPACITY} slots, {LANES} lanes of {BATCH}-step runs",
            f"chaos: {chaos.agent_kills} agent SIGKILLs ({chaos.quick_restarts} back within "
            f"lost_after, {chaos.slow_restarts} after), "
            f"{chaos.server_kills} control-plane SIGKILLs",
            "invariants checked:",
            f"  every run terminal and COMPLETED ............ {dict(states)}; runner exit codes "
            f"{dict(Counter(exits.values()))}, {len(refused)} refused to start (control plane "
            "down, no run created)",
            f"  runs ......................................... {len(details)}",
            f"  steps (each with exactly 1 recorded result) .. {n_steps}",
            f"  attempts ..................................... {n_attempts}",
            f"  lost attempts ................................ {n_lost}",
            f"  retries (attempts after the first) ........... {n_retries}",
            f"  rejected stale reports (report.rejected) ..... {n_rejected}",
            f"  attempts ending twice ........................ {n_ignored_dupes}",
            f"  executions per step (<= started attempts) .... {dict(sorted(per_step.items()))}",
            f"  executions in total .......................... {sum(ran.values())}",
        ]
    )
