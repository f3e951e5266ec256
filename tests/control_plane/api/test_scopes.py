"""Environment-scoped API tokens and runs, over real gRPC with TLS (docs/security.md).

A run records the scope of the token that triggered it; its runner token carries the same
scope. Steps of a scoped run must target environments inside it. A caller scoped to E sees,
and may act on, a run only if the run's scope is not empty and inside E; any other run is
NOT_FOUND, worded exactly like a missing one. Unscoped tokens behave as before.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from control_plane import ServerConfig, create_api_token
from control_plane.store.db import Store
from control_plane.store.models import ApiTokenRow
from meridian.client import ControlClient
from meridian.core.bundle import pack_directory
from meridian.core.errors import NotFound, PermissionDenied
from meridian.models import StepSpec, StepSubmission
from tests.support.databases import POSTGRES_ENV
from tests.support.databases import postgres_database as _postgres_database
from tests.support.plane import ThreadedControlPlane


@dataclass
class Estate:
    config: ServerConfig
    address: str
    ca_file: Path
    bundle_sha256: str

    def client(self, role: str, *environments: str) -> ControlClient:
        token = create_api_token(
            self.config.data_dir,
            role,
            environments=environments,
            db_url=self.config.db_url,
        )
        return ControlClient(self.address, self.ca_file, token=token)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def estate(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Estate]:
    """One control plane per store backend (PostgreSQL when MERIDIAN_TEST_POSTGRES_URL is set:
    the run-scope filter is SQL with a dialect-specific JSON function)."""
    databases: Iterator[str | None] = iter([None])
    if request.param == "postgres":
        base = os.environ.get(POSTGRES_ENV)
        if not base:
            pytest.skip(f"set {POSTGRES_ENV} to run these tests against PostgreSQL too")
        databases = _postgres_database(base)
    db_url = next(databases)
    data_dir = tmp_path_factory.mktemp("scopes")
    config = ServerConfig(
        data_dir=data_dir, listen="127.0.0.1:0", agent_listen="127.0.0.1:0", db_url=db_url
    )
    server = ThreadedControlPlane(config)
    plane = server.start()
    try:
        project = tmp_path_factory.mktemp("project")
        (project / "flows.py").write_text("X = 1\n")
        bundle = pack_directory(project)
        with ControlClient(
            plane.address,
            plane.ca_file,
            token=create_api_token(data_dir, "admin", db_url=db_url),
        ) as admin:
            admin.ensure_bundle(bundle)
        yield Estate(config, plane.address, plane.ca_file, bundle.sha256)
    finally:
        server.stop()
        next(databases, None)  # drops the PostgreSQL database


def step(key: str, target: str) -> StepSubmission:
    spec = StepSpec(name=key.split("#")[0], module="flows", function="work", target=target)
    return StepSubmission(key=key, spec=spec, inputs_json='{"args": [], "kwargs": {}}')


def new_run(client: ControlClient, estate: Estate, flow: str) -> str:
    return client.create_run(flow, "flows.py:f", {}, estate.bundle_sha256)


def flow_name() -> str:
    return f"f_{uuid.uuid4().hex[:8]}"


def runner_token_scopes(estate: Estate, run_id: str) -> list[list[str]]:
    """The stored environments of every runner token minted for ``run_id``."""
    store = Store(estate.config.database_url)
    try:
        query = select(ApiTokenRow.environments).where(ApiTokenRow.flow_run_id == run_id)
        return store.run_sync(lambda session: [list(e) for e in session.scalars(query)])
    finally:
        store.close()


def not_found_message(call: object, run_id: str) -> str:
    """The message of the NotFound ``call(run_id)`` raises, with the id taken out."""
    with pytest.raises(NotFound) as raised:
        call(run_id)  # type: ignore[operator]
    return str(raised.value).replace(run_id, "<id>")


# ---- triggering and submitting ---------------------------------------------------------------


def test_scoped_operator_triggers_and_submits_steps_in_scope(estate: Estate) -> None:
    with estate.client("operator", "env-a", "env-b") as operator:
        run = new_run(operator, estate, flow_name())
        submitted = operator.submit_steps(
            run,
            [
                step("one#1", "environment=env-a"),
                step("two#1", "cloud=aws,environment in (env-a,env-b)"),
                # Two environment requirements: only their intersection (env-b) is reachable.
                step("three#1", "environment in (env-b,env-c),environment=env-b"),
            ],
        )
        assert [s.state for s in submitted] == ["PENDING"] * 3
        assert {s.key for s in operator.get_run(run).steps} == {"one#1", "two#1", "three#1"}


@pytest.mark.parametrize(
    ("target", "problem"),
    [
        ("", "has no target, which does not limit the environment"),
        ("cloud=aws", 'has target "cloud=aws", which does not limit the environment'),
        ("environment!=env-b", "which does not limit the environment"),
        ("environment", "which does not limit the environment"),
        ("environment=env-b", "targets environment(s) env-b"),
        ("environment in (env-a,env-c)", "targets environment(s) env-c"),
    ],
)
def test_steps_that_could_run_outside_the_scope_are_refused(
    estate: Estate, target: str, problem: str
) -> None:
    with estate.client("operator", "env-a") as operator:
        run = new_run(operator, estate, flow_name())
        with pytest.raises(PermissionDenied) as raised:
            operator.submit_steps(run, [step("ok#1", "environment=env-a"), step("bad#1", target)])
        message = str(raised.value)
        assert "'bad#1'" in message and problem in message, message
        assert "scoped to environment(s) env-a" in message, message
        # The whole request was refused: not even the step inside the scope was stored.
        assert operator.get_run(run).steps == ()


def test_runner_token_inherits_the_run_scope(estate: Estate) -> None:
    with estate.client("operator", "env-a") as operator:
        run = new_run(operator, estate, flow_name())
        runner = operator.with_token(operator.runner_tokens[run])
        assert runner.submit_steps(run, [step("in#1", "environment=env-a")])[0].state == "PENDING"
        with pytest.raises(PermissionDenied, match="scoped to environment"):
            runner.submit_steps(run, [step("out#1", "cloud=aws")])
        # Resume and retry mint runner tokens with the run's scope as well.
        operator.cancel_run(run)
        resumed = operator.resume_run(run)
        again = operator.with_token(resumed.runner_token)
        with pytest.raises(PermissionDenied, match="scoped to environment"):
            again.submit_steps(run, [step("out#2", "environment=env-b")])
        retried = operator.retry_run(run)
        assert operator.get_run(retried.flow_run_id).flow_run_id == retried.flow_run_id
        fresh = operator.with_token(retried.runner_token)
        with pytest.raises(PermissionDenied, match="scoped to environment"):
            fresh.submit_steps(retried.flow_run_id, [step("out#3", "")])
    assert runner_token_scopes(estate, run) == [["env-a"], ["env-a"]]  # create, resume
    assert runner_token_scopes(estate, retried.flow_run_id) == [["env-a"]]


def test_an_unscoped_caller_cannot_widen_a_scoped_run(estate: Estate) -> None:
    """The scope belongs to the run: whoever submits, its steps stay inside it."""
    with estate.client("operator", "env-a") as scoped, estate.client("admin") as admin:
        run = new_run(scoped, estate, flow_name())
        with pytest.raises(PermissionDenied, match="scoped to environment"):
            admin.submit_steps(run, [step("wide#1", "cloud=aws")])
        assert admin.submit_steps(run, [step("in#1", "environment=env-a")])[0].state == "PENDING"


# ---- reading ------------------------------------------------------------------------------


def test_scoped_viewer_sees_only_runs_inside_its_scope(estate: Estate) -> None:
    flow = flow_name()
    with (
        estate.client("operator", "env-a") as op_a,
        estate.client("operator", "env-a", "env-b") as op_ab,
        estate.client("operator") as op_all,
        estate.client("viewer", "env-a") as viewer_a,
        estate.client("viewer", "env-b", "env-a") as viewer_ab,
        estate.client("viewer") as viewer_all,
    ):
        run_a, run_ab, run_all = (new_run(c, estate, flow) for c in (op_a, op_ab, op_all))

        def listed(client: ControlClient) -> set[str]:
            return {r.flow_run_id for r in client.list_runs(limit=1000, flow_name=flow)}

        assert listed(viewer_a) == {run_a}
        assert listed(viewer_ab) == {run_a, run_ab}
        assert listed(viewer_all) == {run_a, run_ab, run_all}
        assert viewer_a.get_run(run_a).flow_run_id == run_a
        assert viewer_a.get_run(run_a[:8]).flow_run_id == run_a

        missing = str(uuid.uuid4())
        for hidden in (run_ab, run_all):
            for call in (
                viewer_a.get_run,
                viewer_a.get_logs,
                lambda r: list(viewer_a.watch_run(r)),
            ):
                # Same answer as for a run that does not exist: existence is not leaked.
                assert not_found_message(call, hidden) == not_found_message(call, missing)
            with pytest.raises(NotFound, match="no flow run id starts with"):
                viewer_a.get_run(hidden[:8])


def test_scoped_tokens_do_not_read_the_audit_log(estate: Estate) -> None:
    with estate.client("admin", "env-a") as scoped, estate.client("viewer") as unscoped:
        with pytest.raises(PermissionDenied, match="not scoped to environments"):
            scoped.list_audit_records()
        assert scoped.verify_audit().ok
        triggered = [
            r for r in unscoped.list_audit_records(limit=1000) if r.action == "run.triggered"
        ]
        assert triggered  # unscoped tokens read it as before


def test_the_audit_record_of_a_scoped_run_names_its_scope(estate: Estate) -> None:
    with estate.client("operator", "env-b", "env-a") as scoped, estate.client("admin") as admin:
        run = new_run(scoped, estate, flow_name())
        records = [r for r in admin.iter_audit_records() if r.subject == run]
        assert records[0].action == "run.triggered"
        assert records[0].details["scope"] == ["env-a", "env-b"]


# ---- operator actions ---------------------------------------------------------------------


def test_operator_actions_outside_the_scope_are_not_found(estate: Estate) -> None:
    with (
        estate.client("operator", "env-a") as op_a,
        estate.client("operator", "env-b") as op_b,
        estate.client("operator") as op_all,
    ):
        run_b, run_all = new_run(op_b, estate, flow_name()), new_run(op_all, estate, flow_name())
        for hidden in (run_b, run_all):
            with pytest.raises(NotFound):
                op_a.cancel_run(hidden)
            with pytest.raises(NotFound):
                op_a.retry_run(hidden)
            with pytest.raises(NotFound):
                op_a.submit_steps(hidden, [step("x#1", "environment=env-a")])
            with pytest.raises(NotFound):
                op_a.renew_runner_lease(hidden, 30)
            with pytest.raises(NotFound):
                op_a.finish_run(hidden, succeeded=True)
        op_b.cancel_run(run_b)
        with pytest.raises(NotFound):
            op_a.resume_run(run_b)
        assert op_b.resume_run(run_b).state == "RUNNING"
        assert op_all.get_run(run_b).state == "RUNNING"  # untouched by op_a


# ---- unscoped tokens ----------------------------------------------------------------------


def test_unscoped_tokens_are_unchanged(estate: Estate) -> None:
    with estate.client("operator") as operator, estate.client("viewer") as viewer:
        run = new_run(operator, estate, flow_name())
        submitted = operator.submit_steps(run, [step("any#1", ""), step("aws#1", "cloud=aws")])
        assert [s.state for s in submitted] == ["PENDING", "PENDING"]
        runner = operator.with_token(operator.runner_tokens[run])
        assert runner.submit_steps(run, [step("gcp#1", "cloud=gcp")])[0].state == "PENDING"
        assert viewer.get_run(run[:8]).flow_run_id == run
        assert operator.cancel_run(run).flow_run_id == run
