"""DeleteRun and CollectResults over real gRPC with TLS: admins only, scoped tokens kept to
their environments, requests checked at the edge, a running run refused with its state, a
finished one gone, and a collection without connected agents naming what it skipped."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from control_plane import ServerConfig, create_api_token
from meridian.client import ControlClient
from meridian.core.bundle import pack_directory
from meridian.core.errors import ConflictError, NotFound, PermissionDenied, ValidationError
from tests.support.plane import ThreadedControlPlane


@dataclass
class Plane:
    config: ServerConfig
    address: str
    ca_file: Path
    bundle_sha256: str

    def client(self, role: str, *environments: str) -> ControlClient:
        token = create_api_token(self.config.data_dir, role, environments=environments)
        return ControlClient(self.address, self.ca_file, token=token)


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    config = ServerConfig(
        data_dir=tmp_path_factory.mktemp("cleanup"),
        listen="127.0.0.1:0",
        agent_listen="127.0.0.1:0",
    )
    server = ThreadedControlPlane(config)
    started = server.start()
    try:
        project = tmp_path_factory.mktemp("project")
        (project / "flows.py").write_text("X = 1\n")
        bundle = pack_directory(project)
        plane = Plane(config, started.address, started.ca_file, bundle.sha256)
        with plane.client("admin") as admin:
            admin.ensure_bundle(bundle)
        yield plane
    finally:
        server.stop()


def new_run(client: ControlClient, plane: Plane) -> str:
    return client.create_run("etl", "flows.py:etl", {}, plane.bundle_sha256)


def test_only_admins_delete_runs_and_collect_results(plane: Plane) -> None:
    with plane.client("operator") as operator:
        run_id = new_run(operator, plane)
        with pytest.raises(PermissionDenied):
            operator.delete_run(run_id)
        with pytest.raises(PermissionDenied):
            operator.collect_results(dry_run=True)


def test_a_running_run_is_refused_with_its_state_and_a_finished_one_deleted(
    plane: Plane,
) -> None:
    with plane.client("admin") as admin:
        run_id = new_run(admin, plane)
        with pytest.raises(ConflictError, match=f"run {run_id} is RUNNING"):
            admin.delete_run(run_id[:8], "too early")
        assert admin.finish_run(run_id, succeeded=True, result_json="1") == "COMPLETED"
        deleted = admin.delete_run(run_id[:8], "done with it")
        assert (deleted.flow_run_id, deleted.stored_objects) == (run_id, 0)
        with pytest.raises(NotFound):
            admin.get_run(run_id)
        with pytest.raises(NotFound):
            admin.delete_run(run_id)
        with pytest.raises(ValidationError, match="delete reason is limited"):
            admin.delete_run(new_run(admin, plane), "x" * 5000)


def test_collect_requests_are_checked_at_the_edge(plane: Plane) -> None:
    with plane.client("admin") as admin:
        with pytest.raises(ValidationError, match="older_than_s must be from 0"):
            admin.collect_results(older_than_s=-1)
        with pytest.raises(ValidationError, match="older_than_s must be from 0"):
            admin.collect_results(older_than_s=float("nan"))
        with pytest.raises(ValidationError, match="environment: value"):
            admin.collect_results(environment="not an environment!")
    with (
        plane.client("admin", "aws-prod") as scoped,
        pytest.raises(PermissionDenied, match="limited to environments aws-prod"),
    ):
        scoped.collect_results(environment="gcp-prod")


def test_a_collection_without_agents_skips_what_it_cannot_sweep(plane: Plane) -> None:
    with plane.client("admin") as admin:
        assert admin.collect_results(dry_run=True, environment="onprem").skipped == (
            "onprem: no agent of this environment is connected",
        )
        everything = admin.collect_results(dry_run=True)
        assert everything.sweeps == () and everything.skipped == ()  # no agent enrolled
        records = admin.list_audit_records(limit=100, newest=True)
        collected = [r for r in records if r.action == "results.collected"]
        assert len(collected) == 2 and collected[0].details["dry_run"] is True
