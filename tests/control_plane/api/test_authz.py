"""Every ControlService call checks the caller's API token and role (issue: security).

One in-process control plane; each method is called with an empty request under each role.
A call the role may make is answered by the method itself (OK or a domain error such as
NOT_FOUND); a call it may not make is PERMISSION_DENIED; no token or a bad one is
UNAUTHENTICATED. Runner tokens drive their own run only.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from control_plane import ServerConfig, create_api_token
from control_plane.admin import revoke_api_token_by_id
from control_plane.auth.api_tokens import REQUIRED_ROLE, RUNNER_METHODS, Role
from meridian.client import ControlClient
from meridian.core.bundle import pack_directory
from meridian.core.errors import NotFound, PermissionDenied
from tests.support.plane import ThreadedControlPlane

DENIED = {grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED}
STREAMING_RESPONSE = {"WatchRun", "DownloadBundle"}
STREAMING_REQUEST = {"UploadBundle"}


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerConfig, str, Path]]:
    config = ServerConfig(
        data_dir=tmp_path_factory.mktemp("authz"), listen="127.0.0.1:0", agent_listen="127.0.0.1:0"
    )
    server = ThreadedControlPlane(config)
    started = server.start()
    try:
        yield config, started.address, started.ca_file
    finally:
        server.stop()


def call(address: str, ca_file: Path, method: str, token: str | None) -> grpc.StatusCode:
    """Call ``method`` with an empty request; return the status code it ended with."""
    channel = grpc.secure_channel(
        address, grpc.ssl_channel_credentials(root_certificates=ca_file.read_bytes())
    )
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    name = method.rsplit("/", 1)[1]
    try:
        if name in STREAMING_RESPONSE:
            stub = channel.unary_stream(method)
            for _ in stub(b"", metadata=metadata, timeout=0.5):
                break
        elif name in STREAMING_REQUEST:
            channel.stream_unary(method)(iter([b""]), metadata=metadata, timeout=5)
        else:
            channel.unary_unary(method)(b"", metadata=metadata, timeout=5)
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    finally:
        channel.close()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("role", ["viewer", "operator", "admin"])
def test_each_role_against_each_call(plane: tuple[ServerConfig, str, Path], role: str) -> None:
    config, address, ca_file = plane
    token = create_api_token(config.data_dir, role, name=f"test-{role}")
    rank = {"viewer": Role.VIEWER, "operator": Role.OPERATOR, "admin": Role.ADMIN}[role]
    for method, needed in sorted(REQUIRED_ROLE.items()):
        code = call(address, ca_file, method, token)
        if rank >= needed:
            assert code not in DENIED, (role, method, code)
        else:
            assert code == grpc.StatusCode.PERMISSION_DENIED, (role, method, code)


def test_no_token_bad_token_and_revoked_token_are_unauthenticated(
    plane: tuple[ServerConfig, str, Path],
) -> None:
    config, address, ca_file = plane
    for method in REQUIRED_ROLE:
        assert call(address, ca_file, method, None) == grpc.StatusCode.UNAUTHENTICATED
    fake = "mat_0123456789abcdef." + "A" * 43
    assert call(address, ca_file, "/meridian.v1.ControlService/ListRuns", fake) == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    token = create_api_token(config.data_dir, "admin")
    revoke_api_token_by_id(config.data_dir, token.split(".")[0])
    assert call(address, ca_file, "/meridian.v1.ControlService/ListRuns", token) == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    # Public: agents find their listener before they have any identity.
    assert call(address, ca_file, "/meridian.v1.ControlService/GetServerInfo", None) == (
        grpc.StatusCode.OK
    )


def test_runner_tokens_drive_only_their_own_run(
    plane: tuple[ServerConfig, str, Path], tmp_path: Path
) -> None:
    config, address, ca_file = plane
    operator = ControlClient(address, ca_file, token=create_api_token(config.data_dir, "operator"))
    (tmp_path / "flows.py").write_text("X = 1\n")
    bundle = pack_directory(tmp_path)
    operator.ensure_bundle(bundle)
    run_a = operator.create_run("f", "flows.py:f", {}, bundle.sha256)
    run_b = operator.create_run("f", "flows.py:f", {}, bundle.sha256)
    runner = operator.with_token(operator.runner_tokens[run_a])
    assert runner.renew_runner_lease(run_a, 30) == "RUNNING"
    assert runner.get_run(run_a).flow_run_id == run_a
    with pytest.raises(PermissionDenied, match="its own run"):
        runner.renew_runner_lease(run_b, 30)
    with pytest.raises(PermissionDenied, match="its own run"):
        runner.list_runs()
    # A runner asks for its own run's approvals, never another's, and never decides one.
    assert runner.request_approval(run_a, "deploy#1").run_state == "PAUSED"
    with pytest.raises(PermissionDenied, match="its own run"):
        runner.request_approval(run_b, "deploy#1")
    with pytest.raises(PermissionDenied, match="its own run"):
        runner.decide_approval(run_a, "deploy#1", True)
    assert operator.decide_approval(run_a, "deploy#1", True).run_state == "RUNNING"
    assert all(m in REQUIRED_ROLE for m in RUNNER_METHODS)
    operator.close()


def test_a_runner_token_reads_its_direct_children_and_nothing_else(
    plane: tuple[ServerConfig, str, Path], tmp_path: Path
) -> None:
    """run_deployment follows the child it started with its own token: GetRun, WatchRun
    and FetchResult of a direct child are open to it; a grandchild, an unrelated run and
    every call that drives the child are not."""
    config, address, ca_file = plane
    operator = ControlClient(address, ca_file, token=create_api_token(config.data_dir, "operator"))
    (tmp_path / "flows.py").write_text("X = 2\n")
    bundle = pack_directory(tmp_path)
    operator.ensure_bundle(bundle)
    parent = operator.create_run("f", "flows.py:f", {}, bundle.sha256)
    unrelated = operator.create_run("f", "flows.py:f", {}, bundle.sha256)
    runner = operator.with_token(operator.runner_tokens[parent])
    child = runner.create_run("c", "flows.py:c", {}, "", "subflow", parent_run_id=parent,
                              parent_key="c#1")  # fmt: skip
    child_runner = runner.with_token(runner.runner_tokens[child])
    grandchild = child_runner.create_run("g", "flows.py:g", {}, "", "subflow",
                                         parent_run_id=child, parent_key="g#1")  # fmt: skip

    assert runner.get_run(child).parent_run_id == parent
    stream = runner.watch_run_batches(child)
    assert next(stream)  # its events: the watch is open to the parent
    stream.cancel()
    with pytest.raises(NotFound):  # past authorization: the child has no such step
        runner.fetch_result(child, "nothing#1", tmp_path / "out")
    for run in (grandchild, unrelated):
        with pytest.raises(PermissionDenied, match="its own run"):
            runner.get_run(run)
        with pytest.raises(PermissionDenied, match="its own run"):
            next(runner.watch_run_batches(run))
    with pytest.raises(PermissionDenied, match="its own run"):
        runner.get_run(child[:8])  # a prefix is not a proven child
    with pytest.raises(PermissionDenied, match="its own run"):
        runner.renew_runner_lease(child, 30)  # reading is not driving
    with pytest.raises(PermissionDenied, match="its own run"):
        runner.finish_run(child, True, "1")
    operator.close()


def test_approval_calls_have_the_roles_of_the_docs() -> None:
    """Runners (and operators, like SubmitSteps) ask; operators and admins decide; viewers
    only read approvals through GetRun."""
    service = "/meridian.v1.ControlService/"
    assert REQUIRED_ROLE[service + "RequestApproval"] == Role.OPERATOR
    assert REQUIRED_ROLE[service + "DecideApproval"] == Role.OPERATOR
    assert service + "RequestApproval" in RUNNER_METHODS
    assert service + "DecideApproval" not in RUNNER_METHODS


def test_environment_scoped_tokens_see_and_administer_only_their_agents(
    plane: tuple[ServerConfig, str, Path], tmp_path: Path
) -> None:
    from agent import enroll
    from control_plane import create_join_token

    config, address, ca_file = plane
    for environment in ("scope-a", "scope-b"):
        token = create_join_token(config.data_dir, environment)
        enroll(address, ca_file, token, tmp_path / environment, name=f"{environment}-agent")
    scoped = ControlClient(
        address,
        ca_file,
        token=create_api_token(config.data_dir, "admin", environments=["scope-a"]),
    )
    assert {a.environment for a in scoped.list_agents()} == {"scope-a"}
    assert scoped.drain_agent("scope-a-agent").status == "draining"
    with pytest.raises(NotFound):
        scoped.revoke_agent("scope-b-agent")
    scoped.close()
