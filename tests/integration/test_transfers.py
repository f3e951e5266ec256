"""End to end: a 20 MiB step result produced in one environment and read in another, on a real
estate (control plane and two agents as processes over loopback TLS, the process provider).

The aws agent keeps results at its site (a filesystem result store); the gcp agent has no
store and gets the bytes relayed through the control plane. The consumer sees exactly the
producer's bytes, the transfer is one ledger row and one audit record with the object's
digest, ``meridian transfers`` sums the bytes per (from, to), ``runs show`` lists what
crossed, and a client download of the stored result is relayed, checked and counted too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from meridian.core.resultref import ResultRef
from tests.integration.flows.transfer_flows import payload
from tests.integration.harness import FLOWS, Estate

FLOW_FILE = FLOWS / "transfer_flows.py"
SIZE = 20 * 1024 * 1024


@pytest.fixture(scope="module")
def estate(tmp_path_factory: pytest.TempPathFactory, estate_db: str | None) -> Iterator[Estate]:
    root = tmp_path_factory.mktemp("transfers")
    config = root / "agent-aws.toml"
    config.write_text(f'[result_stores.scratch]\ntype = "filesystem"\nroot = "{root / "aws"}"\n')
    with Estate(root, db_url=estate_db, heartbeat_s=0.5) as e:
        e.add_agent("aws-demo", {"cloud": "aws"}, config=config)
        e.add_agent("gcp-demo", {"cloud": "gcp"})  # no result store: it fetches
        yield e


@pytest.fixture(scope="module")
def crossed(estate: Estate) -> tuple[str, ResultRef]:
    """One run of ``cross`` with a 20 MiB result: (run id, the stored result's reference)."""
    result = estate.cli("run", f"{FLOW_FILE}:cross", "-p", "seed=transfer", "-p", f"size={SIZE}")
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{estate.logs()}"
    run_id = estate.latest_run_id("cross")
    detail = estate.client().get_run(run_id)
    produced = next(s for s in detail.steps if s.key == "produce#1")
    return run_id, ResultRef.from_json(produced.result_ref_json)


def test_the_consumer_reads_exactly_the_producers_bytes(
    estate: Estate, crossed: tuple[str, ResultRef]
) -> None:
    run_id, ref = crossed
    text = payload("transfer", SIZE)
    detail = estate.client().get_run(run_id)
    assert detail.state == "COMPLETED"
    assert json.loads(detail.result_json) == {
        "length": SIZE,
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
    }
    # The stored object is the JSON text of the result, kept in aws-demo's store.
    assert (ref.environment, ref.store, ref.serializer) == ("aws-demo", "scratch", "json")
    assert ref.sha256 == hashlib.sha256(json.dumps(text).encode()).hexdigest()


def test_the_transfer_is_recorded_audited_and_counted(
    estate: Estate, crossed: tuple[str, ResultRef]
) -> None:
    run_id, ref = crossed
    client = estate.client()
    [row] = [t for t in client.list_transfers(flow_run_id=run_id).transfers if t.to_environment]
    assert (row.state, row.step_key, row.bytes, row.sha256) == (
        "COMPLETED",
        "measure#1",
        ref.size,
        ref.sha256,
    )
    assert (row.from_environment, row.to_environment, row.store) == (
        "aws-demo",
        "gcp-demo",
        "scratch",
    )
    assert (row.producer_run_id, row.producer_step_key) == (run_id, "produce#1")
    records = [r for r in client.iter_audit_records() if r.action == "result.transferred"]
    [record] = [r for r in records if r.details["to_environment"] == "gcp-demo"]
    assert record.subject == run_id and record.actor.startswith("agent:")
    assert (record.details["bytes"], record.details["sha256"]) == (ref.size, ref.sha256)
    assert record.details["attempt_id"] == row.attempt_id

    totals = estate.cli("transfers", "--since", "7d", check=True).stdout.splitlines()
    assert ["aws-demo", "gcp-demo", "20.0", "MiB", "1"] in [line.split() for line in totals]
    shown = estate.cli("runs", "show", run_id, check=True).stdout
    assert "measure#1: aws-demo -> gcp-demo  20.0 MiB in 1 transfer" in shown


def test_a_client_download_is_relayed_checked_and_counted(
    estate: Estate, crossed: tuple[str, ResultRef], tmp_path: Path
) -> None:
    run_id, ref = crossed
    out = tmp_path / "result.json"
    estate.cli("results", "get", run_id, "produce#1", "-o", str(out), check=True)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == ref.sha256
    downloads = [
        t
        for t in estate.client().list_transfers(flow_run_id=run_id).transfers
        if not t.to_environment
    ]
    assert [(d.state, d.bytes, d.from_environment) for d in downloads] == [
        ("COMPLETED", ref.size, "aws-demo")
    ]
    listed = estate.cli("transfers", "--list", "--run", run_id, check=True).stdout
    assert "(client)" in listed
