"""Presigned-URL transfers end to end, on a real estate (control plane and three agents as
processes over loopback TLS, the process provider) and real object-store emulators in their
own processes: S3 (moto in server mode) and Azure Blob (Azurite, when Node.js is present).

aws-s3 and azure-az keep results in an object store with ``presign_transfers = true``; gcp-demo
has no store and takes http URLs from 127.0.0.1 (``allow_http_presigned_urls`` and
``presigned_url_hosts``: the emulators are no cloud storage endpoint). A step on gcp-demo
reads a result of each: the producing agent presigns a URL, the consumer downloads it and
checks its digest, the transfer is one ledger row with method ``presigned`` and the object's
bytes (the relay moved none: there is no second row), the consumer's input digest matches,
and the URL is in no log.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from control_plane import ServerConfig
from control_plane.store.db import Store
from control_plane.store.models import TransferRow
from meridian.core.resultref import ResultRef
from tests.agent.results import emulators
from tests.integration.flows.presigned_flows import payload
from tests.integration.harness import FLOWS, Estate

FLOW_FILE = FLOWS / "presigned_flows.py"
SIZE = 2 * 1024 * 1024  # over the inline threshold: stored at its site
BUCKET = "meridian-presigned"


def _s3_store(endpoint: str) -> str:
    import boto3

    boto3.client(
        "s3",
        region_name="us-east-1",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_bucket(Bucket=BUCKET)
    return (
        f'[result_stores.s3-main]\ntype = "s3"\nbucket = "{BUCKET}"\nregion = "us-east-1"\n'
        f'endpoint_url = "{endpoint}"\naccess_key_id = "testing"\n'
        'secret_access_key = "testing"\npresign_transfers = true\npresign_ttl_s = 120\n'
    )


def _azure_store(root: Path, stack: list[object]) -> str | None:
    """The Azurite store's config, or None when Node.js is missing (those tests skip)."""
    if emulators.azurite_missing_reason() is not None:
        return None
    from azure.storage.blob import BlobServiceClient

    emulator = emulators.azurite(root / "azurite")
    (root / "azurite").mkdir()
    url = emulator.__enter__().url
    stack.append(emulator)
    connection = emulators.azurite_connection_string(url)
    BlobServiceClient.from_connection_string(connection).create_container(BUCKET)
    return (
        f'[result_stores.az-main]\ntype = "azure_blob"\ncontainer = "{BUCKET}"\n'
        f'connection_string = "{connection}"\npresign_transfers = true\n'
    )


@pytest.fixture(scope="module")
def estate(tmp_path_factory: pytest.TempPathFactory, estate_db: str | None) -> Iterator[Estate]:
    pytest.importorskip("boto3", reason="install meridian-orchestrator[aws]")
    root = tmp_path_factory.mktemp("presigned")
    (root / "moto").mkdir()
    emulators_open: list[object] = []
    with emulators.moto_s3(root / "moto") as moto:
        try:
            aws = root / "agent-aws.toml"
            aws.write_text(_s3_store(moto.url))
            azure = _azure_store(root, emulators_open)
            consumer = root / "agent-gcp.toml"
            # The emulators listen on loopback: neither https nor a default storage host.
            consumer.write_text(
                "[transfers]\nallow_http_presigned_urls = true\n"
                'presigned_url_hosts = ["127.0.0.1"]\n'
            )
            with Estate(root, db_url=estate_db, heartbeat_s=0.5) as e:
                e.add_agent("aws-s3", {"cloud": "aws"}, config=aws)
                if azure is not None:
                    (root / "agent-azure.toml").write_text(azure)
                    e.add_agent("azure-az", {"cloud": "azure"}, config=root / "agent-azure.toml")
                e.add_agent("gcp-demo", {"cloud": "gcp"}, config=consumer)
                e.azure = azure is not None  # type: ignore[attr-defined]
                yield e
        finally:
            for emulator in emulators_open:
                emulator.__exit__(None, None, None)  # type: ignore[attr-defined]


def crossed(estate: Estate, flow: str, producer: str) -> tuple[str, ResultRef]:
    result = estate.cli("run", f"{FLOW_FILE}:{flow}", "-p", f"seed={flow}", "-p", f"size={SIZE}")
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{estate.logs()}"
    run_id = estate.latest_run_id(flow)
    detail = estate.client().get_run(run_id)
    assert detail.state == "COMPLETED"
    # The consumer's input digest is the producer's.
    text = payload(flow, SIZE)
    assert json.loads(detail.result_json) == {
        "length": SIZE,
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
    }
    produced = next(s for s in detail.steps if s.key == f"{producer}#1")
    return run_id, ResultRef.from_json(produced.result_ref_json)


def transfer_method(estate: Estate, transfer_id: str) -> str:
    """The ledger row's method, read from the control plane's database."""
    store = Store(ServerConfig(data_dir=estate.server_dir, db_url=estate.db_url).database_url)
    try:
        row = store.run_sync(lambda s: s.get(TransferRow, transfer_id))
        return str(row.method)
    finally:
        store.close()


def check_presigned(estate: Estate, run_id: str, ref: ResultRef, secret: str) -> None:
    [row] = estate.client().list_transfers(flow_run_id=run_id).transfers
    assert (row.state, row.bytes, row.sha256, row.to_environment) == (
        "COMPLETED", ref.size, ref.sha256, "gcp-demo")  # fmt: skip
    assert row.step_key == "measure#1"
    assert transfer_method(estate, row.transfer_id) == "presigned" == row.method
    listed = estate.cli("transfers", "--list", "--run", run_id, check=True).stdout
    assert "presigned" in listed
    [record] = [
        r
        for r in estate.client().iter_audit_records()
        if r.action == "result.transferred" and r.details["transfer_id"] == row.transfer_id
    ]
    assert record.details["method"] == "presigned"
    # The control plane's, the agents' and the commands' logs (the emulators' own access
    # logs name the URLs they served, as a store's would).
    ours = [p for p in estate.root.rglob("*.log") if p.name != "emulator.log"]
    assert len(ours) >= 4
    assert not [p for p in ours if secret in p.read_text(errors="replace")]
    shown = estate.cli("runs", "show", run_id, check=True).stdout
    assert f"measure#1: {ref.environment} -> gcp-demo" in shown


def test_an_s3_result_is_read_through_a_presigned_url(estate: Estate) -> None:
    run_id, ref = crossed(estate, "from_s3", "produce_s3")
    assert (ref.environment, ref.store) == ("aws-s3", "s3-main")
    check_presigned(estate, run_id, ref, "X-Amz-Signature")


def test_an_azure_result_is_read_through_a_sas_url(estate: Estate) -> None:
    if not estate.azure:  # type: ignore[attr-defined]
        pytest.skip("node/npm are not installed: install Node.js, then run .ci/azurite-setup.sh")
    run_id, ref = crossed(estate, "from_azure", "produce_azure")
    assert (ref.environment, ref.store) == ("azure-az", "az-main")
    check_presigned(estate, run_id, ref, "sig=")
