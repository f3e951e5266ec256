"""RequestApproval / DecideApproval over real gRPC with TLS: roles, scopes, validation, the
watch stream, cancel, and an approval timer that survives a control-plane restart."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from control_plane import ServerConfig, create_api_token
from meridian.client import ControlClient
from meridian.core.bundle import pack_directory
from meridian.core.errors import ConflictError, NotFound, PermissionDenied, ValidationError
from tests.support.databases import POSTGRES_ENV
from tests.support.databases import postgres_database as _postgres_database
from tests.support.plane import ThreadedControlPlane


@dataclass
class Plane:
    config: ServerConfig
    address: str
    ca_file: Path
    bundle_sha256: str

    def token(self, role: str, *environments: str) -> str:
        return create_api_token(
            self.config.data_dir, role, environments=environments, db_url=self.config.db_url
        )

    def client(self, role: str, *environments: str) -> ControlClient:
        return ControlClient(self.address, self.ca_file, token=self.token(role, *environments))

    def run(self, operator: ControlClient) -> tuple[str, ControlClient]:
        """A new run and a client holding its runner token."""
        run_id = operator.create_run(
            f"f_{uuid.uuid4().hex[:8]}", "flows.py:f", {}, self.bundle_sha256
        )
        return run_id, operator.with_token(operator.runner_tokens[run_id])


def _databases(request: pytest.FixtureRequest) -> Iterator[str | None]:
    if request.param == "sqlite":
        return iter([None])
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f"set {POSTGRES_ENV} to run these tests against PostgreSQL too")
    return _postgres_database(base)


def _start(data_dir: Path, db_url: str | None) -> tuple[ThreadedControlPlane, ServerConfig]:
    config = ServerConfig(
        data_dir=data_dir, listen="127.0.0.1:0", agent_listen="127.0.0.1:0", db_url=db_url
    )
    server = ThreadedControlPlane(config)
    server.start()
    return server, config


def _plane(server: ThreadedControlPlane, config: ServerConfig, project: Path) -> Plane:
    (project / "flows.py").write_text("X = 1\n")
    bundle = pack_directory(project)
    token = create_api_token(config.data_dir, "admin", db_url=config.db_url)
    with ControlClient(server.plane.address, server.plane.ca_file, token=token) as admin:
        admin.ensure_bundle(bundle)
    return Plane(config, server.plane.address, server.plane.ca_file, bundle.sha256)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def plane(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Plane]:
    databases = _databases(request)
    server, config = _start(tmp_path_factory.mktemp("approvals"), next(databases))
    try:
        yield _plane(server, config, tmp_path_factory.mktemp("project"))
    finally:
        server.stop()
        next(databases, None)  # drops the PostgreSQL database


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_the_runner_asks_an_operator_decides_and_others_may_not(plane: Plane) -> None:
    token = plane.token("operator")
    operator_id = token.removeprefix("mat_").split(".")[0]
    operator = ControlClient(plane.address, plane.ca_file, token=token)
    viewer = plane.client("viewer")
    run_id, runner = plane.run(operator)
    asked = runner.request_approval(run_id, "deploy#1", "Deploy build 42?", 600)
    assert (asked.approval.state, asked.run_state) == ("pending", "PAUSED")
    assert asked.approval.deadline is not None
    shown = viewer.get_run(run_id)
    assert shown.state == "PAUSED"
    assert [(a.key, a.state, a.message) for a in shown.approvals] == [
        ("deploy#1", "pending", "Deploy build 42?")
    ]
    assert plane.client("viewer").list_runs(state="PAUSED")[0].flow_run_id == run_id
    with pytest.raises(PermissionDenied, match="operator role"):
        viewer.decide_approval(run_id, "deploy#1", True)
    with pytest.raises(PermissionDenied, match="own run"):
        runner.decide_approval(run_id, "deploy#1", True)

    decided = operator.decide_approval(run_id[:8], "deploy#1", True, "checked the plan")
    assert (decided.approval.state, decided.run_state) == ("approved", "RUNNING")
    assert decided.approval.decided_by == f"token:{operator_id}"
    # Repeating the decision is a no-op; changing it is refused.
    assert operator.decide_approval(run_id, "deploy#1", True).approval.reason == "checked the plan"
    with pytest.raises(ConflictError, match="already approved"):
        operator.decide_approval(run_id, "deploy#1", False, "no")

    records = [r for r in plane.client("admin").list_audit_records(limit=1000, newest=True)
               if r.action == "run.approved" and r.subject == run_id]  # fmt: skip
    assert [(r.actor, r.details["approval"], r.details["reason"]) for r in records] == [
        (f"token:{operator_id}", "deploy#1", "checked the plan")
    ]
    updates = [u for u in _drain(viewer, run_id) if u.kind.startswith(("approval.", "run."))]
    assert [u.kind for u in updates][-4:] == [
        "approval.requested",
        "run.paused",
        "approval.approved",
        "run.running",
    ]
    approved = next(u for u in updates if u.kind == "approval.approved")
    assert approved.step_key == "deploy#1" and approved.approval is not None
    assert approved.approval.decided_by == f"token:{operator_id}"


def _drain(client: ControlClient, run_id: str) -> list:  # type: ignore[type-arg]
    """The run's updates so far (the stream of a live run never ends: stop when idle)."""
    stream = client.watch_run(run_id)
    updates = []
    want = len(client.get_run(run_id).events)
    for update in stream:
        updates.append(update)
        if len(updates) >= want:
            break
    stream.cancel()
    return updates


def test_requests_and_decisions_are_validated_at_the_edge(plane: Plane) -> None:
    operator = plane.client("operator")
    run_id, runner = plane.run(operator)
    bad_requests = [
        (("", "msg", 0), "approval key must be 1-512"),
        (("k" * 513, "msg", 0), "approval key must be 1-512"),
        (("dep\nloy", "msg", 0), "control or format characters"),
        ((" deploy", "msg", 0), "whitespace"),
        (("deploy#1", "x" * 4097, 0), "above the limit of 4096"),
        (("deploy#1", "msg", 0.5), "between 1 and 2592000"),
        (("deploy#1", "msg", 31 * 24 * 3600), "between 1 and 2592000"),
        (("deploy#1", "msg", float("nan")), "between 1 and 2592000"),
        (("deploy#1", "msg", -5), "between 1 and 2592000"),
    ]
    for (key, message, timeout), problem in bad_requests:
        with pytest.raises(ValidationError, match=problem):
            runner.request_approval(run_id, key, message, timeout)
    assert operator.get_run(run_id).state == "RUNNING"  # nothing was stored
    runner.request_approval(run_id, "deploy#1", "é" * 2048, 1)  # 4 KiB exactly, 1 s
    with pytest.raises(ValidationError, match="rejection needs a reason"):
        operator.decide_approval(run_id, "deploy#1", False, "  ")
    with pytest.raises(ValidationError, match="above the limit of 1024"):
        operator.decide_approval(run_id, "deploy#1", True, "r" * 1025)
    with pytest.raises(NotFound, match="no approval 'other#1'"):
        operator.decide_approval(run_id, "other#1", True)


def test_runner_tokens_ask_only_for_their_own_run(plane: Plane) -> None:
    operator = plane.client("operator")
    _, runner_a = plane.run(operator)
    run_b, _ = plane.run(operator)
    with pytest.raises(PermissionDenied, match="its own run"):
        runner_a.request_approval(run_b, "deploy#1")
    assert operator.get_run(run_b).approvals == ()


def test_scoped_operators_decide_only_runs_they_cover(plane: Plane) -> None:
    unscoped = plane.client("operator")
    run_id, runner = plane.run(unscoped)
    runner.request_approval(run_id, "deploy#1")
    scoped = plane.client("operator", "aws-prod")
    with pytest.raises(NotFound) as raised:
        scoped.decide_approval(run_id, "deploy#1", True)
    assert str(raised.value) == f"flow run {run_id} does not exist"
    assert unscoped.get_run(run_id).approvals[0].state == "pending"
    in_scope = plane.client("operator", "aws-prod")
    scoped_run, scoped_runner = plane.run(in_scope)
    scoped_runner.request_approval(scoped_run, "deploy#1")
    assert scoped.decide_approval(scoped_run, "deploy#1", True).run_state == "RUNNING"


def test_cancelling_a_paused_run_ends_it_and_refuses_decisions(plane: Plane) -> None:
    operator = plane.client("operator")
    run_id, runner = plane.run(operator)
    runner.request_approval(run_id, "deploy#1")
    assert operator.cancel_run(run_id, "not this week").state == "CANCELLED"
    with pytest.raises(ConflictError, match="is CANCELLED"):
        operator.decide_approval(run_id, "deploy#1", True)
    with pytest.raises(ConflictError, match="only a RUNNING run"):
        runner.request_approval(run_id, "deploy#2")


def test_an_approval_timer_survives_a_control_plane_restart(tmp_path: Path, db_url: str) -> None:
    server, config = _start(tmp_path / "data", db_url)
    try:
        plane = _plane(server, config, tmp_path)
        operator = plane.client("operator")
        run_id, runner = plane.run(operator)
        runner.request_approval(run_id, "deploy#1", "", 1)
        operator.close()
        runner.close()
        server.stop()
        # Down past the deadline, or up before it: either way the stored timer fires.
        server, config = _start(tmp_path / "data", db_url)
        plane = _plane(server, config, tmp_path)
        viewer = plane.client("viewer")
        wait_for(
            lambda: viewer.get_run(run_id).approvals[0].state == "timed_out",
            "the approval to time out",
        )
        detail = viewer.get_run(run_id)
        assert detail.state == "RUNNING"
        assert (detail.approvals[0].decided_by, detail.approvals[0].reason) == (
            "system",
            "no decision within 1s",
        )
        assert json.loads(detail.parameters_json) == {}
    finally:
        server.stop()
