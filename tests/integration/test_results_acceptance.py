"""Issue 13's acceptance flow on a real estate: a 300 MB result stays at its site.

A control plane and three agents run as separate processes over loopback TLS, each agent in
its own environment: ``aws`` (region eu-west-1, a filesystem result store), ``onprem`` (region
eu-west-1, no store: it fetches) and ``gcp-us`` (region us-central1). The aws environment has
the residency rule ``region in (eu-west-1)``.

One flow: a step on the aws agent returns 300 MB → a step on the same agent reads it straight
from the store (no byte through the control plane, no transfer) → a step on the onprem agent
reads it through a relayed transfer (recorded and audited with its bytes and digest) → a step
in gcp-us is refused before it runs, naming the rule, and the refusal is audited. The control
plane's resident memory stays within 64 MiB of its idle size while the 300 MB cross.

Then the crash cases (long scenarios: ``pytest -m slow``), each with the agent SIGKILLed and
started again: the producing agent
while it stores its result, and the receiving agent in the middle of a transfer. The attempt
is retried or re-attached, the consumers read exactly the producer's bytes (their digests
match) and the store never holds a torn object.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meridian.core.resultref import ResultRef
from tests.integration.flows.site_results import payload
from tests.integration.harness import FLOWS, Estate
from tests.support.deadlines import DEADLINE_S
from tests.support.polling import poll_until

FLOW = f"{FLOWS / 'site_results.py'}:site_results"
BIG = 300 * 1000 * 1000  # the 300 MB
CRASH_SIZE = 96 * 1024 * 1024  # big enough that a transfer and an upload take a while
RULE = "region in (eu-west-1)"
MiB = 1024 * 1024


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


class PeakRss:
    """Samples a process's resident memory every few milliseconds until stopped."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, _rss_kib(self.pid))
            self._stop.wait(0.005)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _idle_rss_kib(pid: int) -> int:
    """The control plane's idle size: the median of a second of samples."""
    samples = []
    for _ in range(20):
        samples.append(_rss_kib(pid))
        time.sleep(0.05)
    return sorted(samples)[len(samples) // 2]


def _agent_config(root: Path, name: str) -> Path:
    path = root / f"{name}.toml"
    path.write_text(
        f'[result_stores.scratch]\ntype = "filesystem"\nroot = "{root / name / "store"}"\n'
        "default = true\n"
    )
    return path


@pytest.fixture(scope="module")
def estate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Estate]:
    root = tmp_path_factory.mktemp("site-results")
    with Estate(root, heartbeat_s=0.5, lost_after_s=4) as e:
        e.add_agent(
            "aws", {"region": "eu-west-1"}, name="aws-agent", config=_agent_config(root, "aws")
        )
        e.add_agent("onprem", {"region": "eu-west-1", "site": "dc1"}, name="onprem-agent")
        e.add_agent("gcp-us", {"region": "us-central1"}, name="gcp-agent")
        e.cli("environments", "residency", "aws", RULE, "--reason", "EU data", check=True)
        yield e


def _run(estate: Estate, size: int) -> tuple[str, dict[str, Any]]:
    result = estate.cli("run", FLOW, "-p", f"size={size}", timeout=6 * DEADLINE_S)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{estate.logs()}"
    run_id = estate.latest_run_id("site_results")
    detail = estate.client().get_run(run_id)
    assert detail.state == "COMPLETED", estate.logs()
    return run_id, json.loads(detail.result_json)


def _expected(size: int) -> dict[str, object]:
    return {"size": size, "sha256": hashlib.sha256(payload(size)).hexdigest()}


def _stored_ref(estate: Estate, run_id: str) -> ResultRef:
    detail = estate.client().get_run(run_id)
    produced = next(s for s in detail.steps if s.key == "produce#1")
    return ResultRef.from_json(produced.result_ref_json)


def _store_objects(estate: Estate) -> list[Path]:
    store = estate.root / "aws" / "store"
    return sorted(p for p in store.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def big_run(estate: Estate) -> tuple[str, dict[str, Any], int, int]:
    """The 300 MB run: (run id, flow result, idle RSS KiB, peak RSS KiB of the control plane)."""
    assert estate.server is not None
    idle = _idle_rss_kib(estate.server.pid)
    with PeakRss(estate.server.pid) as meter:
        run_id, outcome = _run(estate, BIG)
    return run_id, outcome, idle, meter.peak_kib


def test_same_site_and_cross_site_consumers_read_exactly_the_producers_bytes(
    big_run: tuple[str, dict[str, Any], int, int],
) -> None:
    _, outcome, _, _ = big_run
    assert outcome["ref_size"] == BIG
    assert outcome["same_site"] == _expected(BIG)
    assert outcome["on_prem"] == _expected(BIG)


def test_only_the_cross_site_read_moved_bytes_and_it_is_audited(
    estate: Estate, big_run: tuple[str, dict[str, Any], int, int]
) -> None:
    run_id, _, _, _ = big_run
    ref = _stored_ref(estate, run_id)
    assert (ref.environment, ref.store, ref.size, ref.serializer) == (
        "aws",
        "scratch",
        BIG,
        "bytes",
    )
    client = estate.client()
    transfers = client.list_transfers(flow_run_id=run_id).transfers
    # The same-site step read the store in place: the only transfer is the onprem one.
    assert [(t.step_key, t.from_environment, t.to_environment, t.state) for t in transfers] == [
        ("on_prem#1", "aws", "onprem", "COMPLETED")
    ]
    assert (transfers[0].bytes, transfers[0].sha256) == (BIG, ref.sha256)
    audited = [
        r
        for r in client.iter_audit_records()
        if r.action == "result.transferred" and r.subject == run_id
    ]
    assert [(r.details["to_environment"], r.details["bytes"]) for r in audited] == [("onprem", BIG)]


def test_the_step_outside_the_residency_rule_is_refused_before_it_runs(
    estate: Estate, big_run: tuple[str, dict[str, Any], int, int]
) -> None:
    run_id, outcome, _, _ = big_run
    refusal = str(outcome["outside"])
    assert "residency" in refusal and RULE in refusal and "gcp-us" in refusal, refusal
    detail = estate.client().get_run(run_id)
    assert "outside#1" not in {s.key for s in detail.steps}  # nothing was created, nothing ran
    refused = [r for r in estate.client().iter_audit_records() if r.action == "residency.refused"]
    assert any(r.subject == run_id or r.details.get("flow_run_id") == run_id for r in refused)


def test_a_step_naming_a_store_its_agents_lack_is_refused_before_it_runs(
    estate: Estate, big_run: tuple[str, dict[str, Any], int, int]
) -> None:
    run_id, outcome, _, _ = big_run
    refusal = str(outcome["no_store"])
    assert refusal.startswith("ValidationError"), refusal
    assert "'scratch'" in refusal and "onprem-agent" in refusal, refusal
    detail = estate.client().get_run(run_id)
    assert "kept_on_prem#1" not in {s.key for s in detail.steps}


def test_the_control_plane_holds_no_whole_object_in_memory(
    big_run: tuple[str, dict[str, Any], int, int],
) -> None:
    _, _, idle_kib, peak_kib = big_run
    assert peak_kib - idle_kib <= 64 * 1024, (
        f"control plane RSS went from {idle_kib / 1024:.0f} MiB idle to a peak of "
        f"{peak_kib / 1024:.0f} MiB while 300 MB crossed"
    )


def _wait_for_file(root: Path, pattern: str, min_bytes: int) -> Path:
    def found() -> Path | None:
        for path in root.rglob(pattern):
            try:
                if path.stat().st_size >= min_bytes:
                    return path
            except FileNotFoundError:
                continue
        return None

    return poll_until(found, timeout=4 * DEADLINE_S, interval=0.01, message=f"{pattern} in {root}")


def _wait_connected_again(
    estate: Estate, name: str, environment: str, labels: dict[str, str]
) -> None:
    config = estate.root / f"{environment}.toml"
    estate.start_agent(name, environment, labels, config=config if config.exists() else None)


@pytest.mark.slow
def test_a_producer_killed_while_storing_its_result_leaves_no_torn_object(
    estate: Estate,
) -> None:
    before = set(_store_objects(estate))
    runner = estate.run_background(FLOWS / "site_results.py", "site_results", f"size={CRASH_SIZE}")
    # The step's result file is complete (the executor renames it into place): the agent is
    # about to store it, or storing it. Kill the agent there.
    _wait_for_file(estate.root / "agents" / "aws-agent", "result.bin", CRASH_SIZE)
    estate.kill_agent("aws-agent")
    _wait_connected_again(estate, "aws-agent", "aws", {"region": "eu-west-1"})
    assert runner.wait(timeout=6 * DEADLINE_S) == 0, estate.logs()
    run_id = estate.latest_run_id("site_results")
    detail = estate.client().get_run(run_id)
    assert detail.state == "COMPLETED"
    outcome = json.loads(detail.result_json)
    assert outcome["same_site"] == outcome["on_prem"] == _expected(CRASH_SIZE)
    ref = _stored_ref(estate, run_id)
    # Every object in the store is whole: its bytes hash to what its name's ref says, and no
    # partial upload was left as an object.
    new_objects = [p for p in _store_objects(estate) if p not in before]
    assert [p for p in new_objects if p.suffix == ".part"] == []
    digests = {hashlib.sha256(p.read_bytes()).hexdigest() for p in new_objects}
    assert digests == {ref.sha256}


@pytest.mark.slow
def test_a_receiver_killed_mid_transfer_is_retried_and_reads_the_right_bytes(
    estate: Estate,
) -> None:
    runner = estate.run_background(FLOWS / "site_results.py", "site_results", f"size={CRASH_SIZE}")
    # The onprem agent is receiving: its partial input file has grown past a few MiB.
    _wait_for_file(estate.root / "agents" / "onprem-agent", "*.part", 4 * MiB)
    estate.kill_agent("onprem-agent")
    _wait_connected_again(estate, "onprem-agent", "onprem", {"region": "eu-west-1", "site": "dc1"})
    assert runner.wait(timeout=6 * DEADLINE_S) == 0, estate.logs()
    run_id = estate.latest_run_id("site_results")
    detail = estate.client().get_run(run_id)
    assert detail.state == "COMPLETED", estate.logs()
    outcome = json.loads(detail.result_json)
    assert outcome["on_prem"] == _expected(CRASH_SIZE)
    transfers = estate.client().list_transfers(flow_run_id=run_id).transfers
    to_onprem = [t for t in transfers if t.to_environment == "onprem"]
    # The cut transfer is not counted as complete; the one that fed the step is.
    completed = [t for t in to_onprem if t.state == "COMPLETED"]
    assert len(completed) >= 1 and all(t.bytes == CRASH_SIZE for t in completed)
    assert any(t.state == "FAILED" or t.bytes < CRASH_SIZE for t in to_onprem if t not in completed)
