"""``meridian deploy`` and ``meridian deployments ...`` against a real control plane (TLS,
API tokens, SQLite and PostgreSQL). No agent offers a runner here: a triggered run stays
PENDING, recorded with its deployment version and trigger."""

from __future__ import annotations

import argparse
import dataclasses
import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from control_plane import ServerConfig, create_api_token
from meridian import _deployments
from meridian.cli.common import UsageError
from meridian.cli.deploy import (
    convert_partial,
    outcome_triggers,
    parse_schedule,
    register,
    schedule_lines,
)
from meridian.cli.deployments import render_info
from meridian.core.errors import ValidationError
from protos.meridian.v1 import control_pb2
from tests.support.databases import DATABASES, postgres_database, postgres_server
from tests.support.plane import ThreadedControlPlane

FLOW = textwrap.dedent(
    """
    import datetime as dt
    import enum

    from meridian import flow


    class Mode(enum.Enum):
        FULL = "full"
        DELTA = "delta"


    @flow
    def nightly(day: dt.date, mode: Mode = Mode.FULL, n: int = 3) -> int:
        return n
    """
)


@pytest.fixture(params=DATABASES)
def plane(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[ServerConfig, str]]:
    dbs: Iterator[str] | None = None
    db_url = None
    if request.param == "postgres":
        dbs = postgres_database(postgres_server("the deployments CLI tests"))
        db_url = next(dbs)
    config = ServerConfig(
        data_dir=tmp_path / "server", listen="127.0.0.1:0", agent_listen="127.0.0.1:0",
        db_url=db_url,
    )  # fmt: skip
    server = ThreadedControlPlane(config)
    started = server.start()
    try:
        yield config, started.address
    finally:
        server.stop()
        if dbs is not None:
            next(dbs, None)


def flags(config: ServerConfig, address: str, role: str) -> list[str]:
    token = create_api_token(config.data_dir, role, db_url=config.db_url)
    ca = str(config.data_dir / "tls" / "ca.crt")
    return ["--control-plane", address, "--ca-file", ca, "--token", token]


def test_deploy_show_pause_resume_and_run(cli, plane, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config, address = plane
    operator = flags(config, address, "operator")
    viewer = flags(config, address, "viewer")
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "flows.py").write_text(FLOW)
    entry = str(tmp_path / "code" / "flows.py") + ":nightly"

    deployed = cli(
        "deploy", entry, "--name", "nightly", "--runner-target", "pool=batch",
        "-p", "mode=DELTA", "--schedule", "cron=30 2 * * *,tz=Europe/Berlin;param.day=2026-01-01",
        "--schedule", "every=1h;catch-up=latest;jitter=5m;param.day=2026-01-02",
        "--description", "nightly load", "--tag", "etl", *operator,
    )  # fmt: skip
    assert deployed.code == 0, deployed.err
    assert "Deployed nightly version 1 (nightly" in deployed.out
    assert "cron '30 2 * * *' in Europe/Berlin" in deployed.out
    assert deployed.out.count("next: ") == 10
    assert "catch-up latest (window 1d), jitter 5m" in deployed.out
    assert 'params: {"day": "2026-01-02"}' in deployed.out

    bad = cli("deploy", entry, "--name", "nightly", "-p", "n=many", *operator)
    assert bad.code != 0 and "parameter 'n'" in bad.err
    again = cli("deploy", entry, "--name", "nightly", "-p", "n=7", "--max-runner-resumes", "0",
                *operator)  # fmt: skip
    assert again.code == 0 and "version 2" in again.out, again.err

    listed = cli("deployments", "list", *viewer)
    assert "nightly" in listed.out and "2" in listed.out
    versions = cli("deployments", "versions", "nightly", "--json", *viewer)
    assert [v["version"] for v in json.loads(versions.out)] == [2, 1]
    old = json.loads(cli("deployments", "show", "nightly", "--version", "1", "--json", *viewer).out)
    assert old["parameters"] == {"mode": "DELTA"} and len(old["schedules"]) == 2
    assert old["max_runner_resumes"] == 3  # the default
    shown = cli("deployments", "show", "nightly", *viewer)
    assert "day: date (required)" in shown.out and '"n": 7' in shown.out
    assert "at most 0 resumes" in shown.out  # 0 is kept: the first lost runner fails the run

    assert cli("deployments", "pause", "nightly", *viewer).code != 0  # viewers only read
    assert cli("deployments", "pause", "nightly", *operator).out.startswith("Paused nightly")
    assert cli("deployments", "resume", "nightly", *operator).out.startswith("Resumed nightly")

    missing = cli("deployments", "run", "nightly", *operator)
    assert missing.code != 0 and "missing required parameter(s): day" in missing.err
    started = cli("deployments", "run", "nightly", "-p", "day=2026-03-01", "-p", "mode=full",
                  "--idempotency-key", "k1", *operator)  # fmt: skip
    assert started.code == 0, started.err
    run_id = started.out.split()[1]
    assert "PENDING" in started.out
    repeat = cli("deployments", "run", "nightly", "-p", "day=2026-03-01", "--idempotency-key",
                 "k1", *operator)  # fmt: skip
    assert repeat.out.split()[1] == run_id and "of this idempotency key" in repeat.out

    recent = json.loads(cli("deployments", "show", "nightly", "--json", *viewer).out)
    (run,) = recent["recent_runs"]
    assert (run["flow_run_id"], run["state"], run["version"], run["trigger"]) == (
        run_id, "PENDING", 2, "api",
    )  # fmt: skip
    assert recent["queued_runs"] == 1
    detail = json.loads(cli("runs", "show", run_id, "--json", *viewer).out)
    assert detail["state"] == "PENDING"

    assert cli("deployments", "delete", "nightly", *operator).code != 0  # admins delete
    admin = flags(config, address, "admin")
    assert cli("deployments", "delete", "nightly", *admin).code == 0
    assert cli("deployments", "show", "nightly", *viewer).code != 0


def test_the_schedule_grammar() -> None:
    request, params = parse_schedule(
        "cron=0 9 * * 1,3,tz=Europe/Berlin; catch-up=all; window=2d; max-runs=5; param.day=x"
    )
    assert request.definition == {
        "kind": "cron",
        "cron": "0 9 * * 1,3",
        "timezone": "Europe/Berlin",
    }
    assert (request.catch_up, request.catch_up_window_s, request.max_catch_up_runs) == (
        "all",
        172800,
        5,
    )
    assert params == {"day": "x"}
    every, _ = parse_schedule("every=30s,anchor=2026-01-01T00:00:10Z;jitter=5s")
    assert every.definition["every_seconds"] == 30 and every.jitter_s == 5
    once, _ = parse_schedule("at=2026-05-01T09:00:00+02:00")
    assert once.definition == {"kind": "once", "at": "2026-05-01T09:00:00+02:00"}
    for bad in ("hourly", "every=5 minutes", "cron=* * * * *;colour=red", "every=1h;max-runs=x"):
        with pytest.raises(UsageError):
            parse_schedule(bad)
    for bad in ("every=5s;catch-up=all;max-runs=0", "cron=0 9 * * *;max-runs=-3"):
        with pytest.raises(UsageError, match="max-runs: expected a number from 1 to 1000"):
            parse_schedule(bad)
    assert parse_schedule("every=5s")[0].max_catch_up_runs is None  # the server's default
    # A window of 0 would reach the server as "the default window" (1 day): refused instead.
    with pytest.raises(UsageError, match=r"window must be longer than 0.*catch-up=skip"):
        parse_schedule("every=5s;catch-up=all;window=0s")
    assert parse_schedule("every=5s;window=90s")[0].catch_up_window_s == 90


@pytest.mark.parametrize("levels", [300, 3000])
def test_a_default_parameter_nested_too_deeply_is_a_clear_error(levels: int) -> None:
    def etl(blob: list) -> None:  # type: ignore[type-arg]
        return None

    with pytest.raises(ValidationError, match="parameter 'blob' is nested deeper than 200"):
        convert_partial(etl, {"blob": "[" * levels + "]" * levels})


def test_on_completion_of_is_repeatable_and_its_options_apply_to_each() -> None:
    def parsed(*argv: str) -> argparse.Namespace:
        parser = argparse.ArgumentParser()
        register(parser.add_subparsers(), [])
        return parser.parse_args(["deploy", "f.py:f", "--name", "d", *argv])

    triggers = outcome_triggers(
        parsed(
            "--on-completion-of",
            "a",
            "--on-completion-of",
            "b",
            "--on-state",
            "FAILED",
            "--upstream-run-param",
            "upstream",
        )
    )
    assert [(t.upstream_deployment, t.states, t.run_id_parameter) for t in triggers] == [
        ("a", ("FAILED",), "upstream"),
        ("b", ("FAILED",), "upstream"),
    ]
    assert outcome_triggers(parsed()) == ()
    with pytest.raises(UsageError, match="--on-completion-of a is given more than once"):
        outcome_triggers(parsed("--on-completion-of", "a", "--on-completion-of", "a"))
    with pytest.raises(UsageError, match="need --on-completion-of"):
        outcome_triggers(parsed("--on-state", "FAILED"))


def test_show_and_versions_never_print_raw_control_characters() -> None:
    spec = control_pb2.DeploymentSpec(
        name="d", flow_name="etl", entrypoint="f.py:etl", description="line1\nline2\x1b[31mRED"
    )
    info = _deployments.info_from_proto(control_pb2.DeploymentInfo(spec=spec, version=1))
    text = render_info(info)
    assert "\x1b" not in text and "line2\\x1b[31mRED" in text
    assert "About       line1\n            line2" in text  # a newline stays a line


def test_schedule_lines_show_the_catch_up_window_max_runs_jitter_and_params() -> None:
    schedule = _deployments.ScheduleInfo(
        "sch_1", "every 5m", {}, {"day": "x"}, "all", 7200.0, 5, 7.5, False, []
    )
    info = dataclasses.replace(
        _deployments.info_from_proto(control_pb2.DeploymentInfo()), schedules=[schedule]
    )
    assert schedule_lines(info) == [
        "Schedules",
        "  sch_1  every 5m  catch-up all (window 2h, max-runs 5), jitter 7.5s",
        '      params: {"day": "x"}',
    ]
