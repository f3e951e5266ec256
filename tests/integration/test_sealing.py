"""End to end: steps sealed with the key group ``eu-sites`` on a real estate (control plane
and agents as processes over loopback TLS, the process provider).

The flow runner (``meridian run``) and the ``site=eu`` agent hold the key; the ``site=us``
agent and the control plane do not. After each run the control plane's whole database (every
row of every table, and for SQLite the raw files) and its log are searched for the plaintext
inputs and results: none may appear, while the runner still gets the right values.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from control_plane.store.db import make_engine, sqlite_url
from tests.faults.invariants import starts
from tests.integration.harness import FLOWS, Estate
from tests.support.deadlines import DEADLINE_S

FLOW_FILE = FLOWS / "sealed_flows.py"
ACCOUNT = "DE89-3704-0044-0532-0130-00"


@pytest.fixture(scope="module")
def keyfile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "eu-sites.key"
    estate = Estate(tmp_path_factory.mktemp("keygen"))
    estate.cli("seal-key", "new", str(path), check=True)
    return path


@pytest.fixture(scope="module")
def estate(
    tmp_path_factory: pytest.TempPathFactory, estate_db: str | None, keyfile: Path
) -> Iterator[Estate]:
    root = tmp_path_factory.mktemp("sealed")
    config = root / "agent-eu.toml"
    config.write_text(f'[sealing.keys]\neu-sites = "file:{keyfile}"\n')
    with Estate(root, db_url=estate_db, heartbeat_s=0.5, runner_grace_s=1.0) as e:
        e.add_agent("eu-demo", {"site": "eu"}, config=config)
        e.add_agent("us-demo", {"site": "us"})  # holds no sealing key
        yield e


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "account.txt"
    path.write_text(ACCOUNT + "\n")
    return path


def runner_env(keyfile: Path) -> dict[str, str]:
    return {"MERIDIAN_SEAL_KEYS": f"eu-sites=file:{keyfile}", "MERIDIAN_RUNNER_LEASE_S": "2"}


def run(estate: Estate, keyfile: Path, flow: str, *params: str) -> tuple[int, str, str]:
    """``meridian run --json``: exit code, the outcome document (stdout) and the run id."""
    args = ["run", f"{FLOW_FILE}:{flow}", "--json"]
    for param in params:
        args += ["-p", param]
    result = estate.cli(*args, env=runner_env(keyfile))
    assert result.stdout.strip(), result.stderr + estate.logs()
    run_id = estate.client().list_runs(limit=1, flow_name=flow)[0].flow_run_id
    return result.returncode, result.stdout, run_id


def show(estate: Estate, run_id: str) -> tuple[dict, str]:
    as_json = estate.cli("runs", "show", run_id, "--json", check=True).stdout
    return json.loads(as_json), estate.cli("runs", "show", run_id, check=True).stdout


def stored_values(estate: Estate) -> Iterator[tuple[str, bytes]]:
    """Every value of every row the control plane stored, as bytes, with its table name."""
    engine = make_engine(estate.db_url or sqlite_url(estate.server_dir / "meridian.db"))
    try:
        with engine.connect() as conn:
            for table in inspect(conn).get_table_names():
                for row in conn.execute(text(f'SELECT * FROM "{table}"')):
                    for value in row:
                        if isinstance(value, bytes | memoryview):
                            yield table, bytes(value)
                        elif value is not None:
                            yield table, json.dumps(value, default=str).encode()
                            yield table, str(value).encode()
    finally:
        engine.dispose()


def assert_control_plane_never_saw(estate: Estate, *plaintexts: str) -> None:
    needles = [p.encode() for p in plaintexts]
    rows = 0
    for table, value in stored_values(estate):
        rows += 1
        found = [n for n in needles if n in value]
        assert not found, f"{found} stored in table {table}: {value[:300]!r}"
    assert rows > 0
    # SQLite: also the raw pages (WAL included), where even overwritten rows would linger.
    if estate.db_url is None:
        for path in estate.server_dir.glob("meridian.db*"):
            data = path.read_bytes()
            assert not any(n in data for n in needles), path
    server_log = (estate.root / "server.log").read_bytes()
    assert not any(n in server_log for n in needles)


def test_sealed_flow_runs_end_to_end_and_the_control_plane_holds_only_ciphertext(
    estate: Estate, keyfile: Path, source: Path
) -> None:
    code, output, run_id = run(estate, keyfile, "sealed_payment", f"source={source}")
    assert code == 0, output + estate.logs()
    # The runner got the real values back (opened with its key) ...
    outcome = json.loads(output)
    assert outcome["state"] == "COMPLETED"
    assert outcome["result"] == {
        "holder": f"HOLDER-OF-{ACCOUNT}",
        "digits": sum(c.isdigit() for c in ACCOUNT),
        "rejected": f"account {ACCOUNT} is blocked",
    }
    # ... while the control plane stored and shows only key groups and digests.
    detail, shown = show(estate, run_id)
    for rendered in (json.dumps(detail), shown):
        assert ACCOUNT not in rendered and "HOLDER-OF" not in rendered
    steps = {s["key"]: s for s in detail["steps"]}
    assert steps["enrich#1"]["result"]["sealed"]["key_group"] == "eu-sites"
    assert detail["result"]["sealed"]["key_group"] == "eu-sites"
    rejected = steps["reject#1"]["attempts"][0]
    assert rejected["error"]["type"] == "builtins.ValueError"
    assert rejected["error"]["message"] == "[sealed: eu-sites]"
    assert "eu-sites: enrich#1, (flow result)" in shown
    assert {a["environment"] for s in detail["steps"] for a in s["attempts"]} == {"eu-demo"}
    assert_control_plane_never_saw(estate, ACCOUNT)
    # Positive control: the search does see what the control plane stores in plaintext (the
    # flow parameters, here the path of the file holding the account).
    assert any(str(source).encode() in value for _, value in stored_values(estate))
    # The audit trail, made of digests of the sealed values, still verifies.
    verified = estate.cli("audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_step_level_sealing_in_an_unsealed_flow(
    estate: Estate, keyfile: Path, source: Path
) -> None:
    code, output, run_id = run(estate, keyfile, "step_sealed_only", f"source={source}")
    assert code == 0, output + estate.logs()
    digits = sum(c.isdigit() for c in ACCOUNT)
    assert json.loads(output)["result"] == digits
    detail, _ = show(estate, run_id)
    assert detail["result"] == digits  # the flow itself is not sealed
    (step,) = detail["steps"]
    assert step["result"]["sealed"]["key_group"] == "eu-sites"
    assert_control_plane_never_saw(estate, ACCOUNT)


def test_an_agent_without_the_key_fails_the_attempt_once_naming_the_group(
    estate: Estate, keyfile: Path, source: Path
) -> None:
    code, output, run_id = run(
        estate, keyfile, "sealed_step_without_key_at_site", f"source={source}"
    )
    assert code != 0 and json.loads(output)["state"] == "FAILED"
    detail, shown = show(estate, run_id)
    assert detail["state"] == "FAILED"
    (step,) = detail["steps"]
    (attempt,) = step["attempts"]  # permanent: not retried despite retries=2
    assert attempt["environment"] == "us-demo"
    error = attempt["error"]
    assert (error["error_class"], error["type"]) == ("permanent", "meridian.core.errors.SealError")
    assert "this agent has no key for key group 'eu-sites'" in error["message"]
    assert "[sealing.keys]" in error["message"]
    assert "SealError" in shown
    assert_control_plane_never_saw(estate, ACCOUNT)


def test_resume_reuses_completed_sealed_steps(
    estate: Estate, keyfile: Path, source: Path, tmp_path: Path
) -> None:
    """Sealing is deterministic, so the replayed body submits the same inputs digest and the
    control plane hands back the completed step's (sealed) result instead of running it."""
    work = tmp_path
    runner = estate.cli_background(
        "run",
        f"{FLOW_FILE}:sealed_chain",
        "-p",
        f"source={source}",
        "-p",
        f"work={work}",
        env=runner_env(keyfile),
    )
    run_id = estate.latest_run_id("sealed_chain")
    estate.wait_until(lambda: len(starts(work, "second")) == 1, "the second step to start")
    before = {s.key: s.inputs_digest for s in estate.client().get_run(run_id).steps}
    runner.send_signal(signal.SIGKILL)
    runner.wait(timeout=DEADLINE_S)
    assert estate.wait_for_state(run_id, {"CRASHED"}) == "CRASHED"
    (work / "gate").write_text("open")

    resumed = estate.cli("runs", "resume", run_id, env=runner_env(keyfile))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr + estate.logs()
    detail = estate.client().get_run(run_id)
    assert detail.state == "COMPLETED"
    assert {s.key: s.inputs_digest for s in detail.steps} == before
    assert len(starts(work, "first")) == 1 and len(starts(work, "second")) == 1
    assert_control_plane_never_saw(estate, ACCOUNT)
