"""The server cuts unary and upload calls at their budget, whatever deadline the client set."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator

import grpc
import pytest

from control_plane import ServerConfig, create_api_token
from control_plane.api.budgets import DEFAULT_BUDGET_S, LONG_CALLS, CallBudgets
from protos.meridian.v1 import common_pb2, control_pb2, control_pb2_grpc
from tests.support.plane import ThreadedControlPlane
from tests.support.tls import with_bearer

# Short, so the upload budget here is 5 s; long enough that a loaded 2-core machine answers the
# plain unary calls of these tests (HasBundle) within it.
BUDGET_S = 0.5


@pytest.fixture(scope="module")
def control(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[control_pb2_grpc.ControlServiceStub]:
    config = ServerConfig(
        data_dir=tmp_path_factory.mktemp("budgets"),
        listen="127.0.0.1:0",
        agent_listen="127.0.0.1:0",
        call_budget_s=BUDGET_S,
    )
    with ThreadedControlPlane(config) as plane:
        token = create_api_token(config.data_dir, "admin")
        credentials = grpc.ssl_channel_credentials(root_certificates=plane.ca_file.read_bytes())
        channel = with_bearer(grpc.secure_channel(plane.address, credentials), token)
        try:
            yield control_pb2_grpc.ControlServiceStub(channel)
        finally:
            channel.close()


def slow_upload(data: bytes, pause_s: float) -> Iterator[common_pb2.BundleChunk]:
    sha = hashlib.sha256(data).hexdigest()
    yield common_pb2.BundleChunk(sha256=sha, total_size=len(data), data=data[:1])
    time.sleep(pause_s)  # a slow-loris client: the rest comes much later
    yield common_pb2.BundleChunk(data=data[1:])


def test_a_slow_upload_without_a_client_deadline_is_cut_at_its_budget(
    control: control_pb2_grpc.ControlServiceStub,
) -> None:
    data = b"slow bundle"
    upload_budget = BUDGET_S * LONG_CALLS["UploadBundle"]
    with pytest.raises(grpc.RpcError) as raised:
        control.UploadBundle(slow_upload(data, pause_s=upload_budget + 2.0))  # no client deadline
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert f"gives UploadBundle at most {upload_budget:g}s" in (raised.value.details() or "")
    # Nothing was stored, the server is fine, and an upload within the budget goes through.
    sha = hashlib.sha256(data).hexdigest()
    assert not control.HasBundle(control_pb2.HasBundleRequest(sha256=sha), timeout=10).present
    response = control.UploadBundle(slow_upload(data, pause_s=0.0), timeout=10)
    assert response.sha256 == sha
    assert control.HasBundle(control_pb2.HasBundleRequest(sha256=sha), timeout=10).present


def test_budgets_per_method() -> None:
    budgets = CallBudgets()
    assert budgets.budget_s("GetRun") == DEFAULT_BUDGET_S
    assert budgets.budget_s("UploadBundle") == DEFAULT_BUDGET_S * LONG_CALLS["UploadBundle"]
    with pytest.raises(ValueError):
        CallBudgets(0)
