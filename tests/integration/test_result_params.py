"""End to end: a stored result of one run passed as a parameter of another
(``meridian run FILE:FLOW -p data=@result:RUN/STEP``), on a real estate (control plane, an
agent with a filesystem result store and an agent offering a runner slot, as processes over
loopback TLS).

Run 1 leaves a 1 MiB result at its site. Run 2 receives it as a ``ResultRef`` parameter (its
stored parameters hold the marker, not the bytes) and passes it to a step that checks its
digest; so does a run whose body a hosted runner executes (``--remote``). A forged reference
given as a parameter is refused when the body passes it to a step, and a reference to a step
that does not exist is refused before any run is created.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import pytest

from meridian.core.resultref import REF_MARKER, ResultRef, ref_marker
from tests.integration.flows.param_results import payload
from tests.integration.harness import FLOWS, Estate

FLOW_FILE = FLOWS / "param_results.py"
SIZE = 1024 * 1024


@pytest.fixture(scope="module")
def estate(tmp_path_factory: pytest.TempPathFactory, estate_db: str | None) -> Iterator[Estate]:
    root = tmp_path_factory.mktemp("result-params")
    config = root / "agent-aws.toml"
    config.write_text(f'[result_stores.scratch]\ntype = "filesystem"\nroot = "{root / "aws"}"\n')
    with Estate(root, db_url=estate_db, heartbeat_s=0.5) as e:
        e.add_agent("aws-demo", {"cloud": "aws"}, config=config)
        e.add_agent("hosted", {"pool": "hosted"}, name="host-a", runner_slots=1)
        yield e


@pytest.fixture(scope="module")
def produced(estate: Estate) -> tuple[str, ResultRef]:
    """Run 1 of ``make``: (its run id, the reference of its 1 MiB stored result)."""
    result = estate.cli("run", f"{FLOW_FILE}:make", "-p", f"size={SIZE}")
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{estate.logs()}"
    run_id = estate.latest_run_id("make")
    step = next(s for s in estate.client().get_run(run_id).steps if s.key == "produce#1")
    return run_id, ResultRef.from_json(step.result_ref_json)


def _run_json(estate: Estate, flow: str, *params: str) -> dict[str, object]:
    args = [arg for p in params for arg in ("-p", p)]
    result = estate.cli("run", f"{FLOW_FILE}:{flow}", *args, "--json")
    try:
        document: dict[str, object] = json.loads(result.stdout)
    except ValueError:
        raise AssertionError(f"{result.stdout}\n{result.stderr}\n{estate.logs()}") from None
    return document


def test_a_stored_result_passed_as_a_parameter_reaches_a_step(
    estate: Estate, produced: tuple[str, ResultRef]
) -> None:
    run_id, ref = produced
    assert (ref.environment, ref.store, ref.size) == ("aws-demo", "scratch", SIZE + 2)
    outcome = _run_json(estate, "consume", f"data=@result:{run_id[:8]}/produce#1")
    assert outcome["state"] == "COMPLETED", outcome
    text = payload(SIZE)
    assert outcome["result"] == {
        "ref_size": ref.size,
        "measured": {"length": SIZE, "sha256": hashlib.sha256(text.encode()).hexdigest()},
    }
    # The run's parameters hold the reference, never the bytes.
    detail = estate.client().get_run(str(outcome["flow_run_id"]))
    assert json.loads(detail.parameters_json) == {"data": ref_marker(ref)}


def test_a_hosted_runner_receives_the_parameter_as_a_reference(
    estate: Estate, produced: tuple[str, ResultRef]
) -> None:
    run_id, ref = produced
    started = estate.cli(
        "run", "--remote", f"{FLOW_FILE}:consume", "--runner-target", "pool=hosted",
        "-p", f"data=@result:{run_id}/produce#1", "--json", check=True,
    )  # fmt: skip
    remote = json.loads(started.stdout)["flow_run_id"]
    final = estate.wait_for_state(remote, {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})
    assert final == "COMPLETED", estate.logs()
    detail = estate.client().get_run(remote)
    assert json.loads(detail.parameters_json) == {"data": ref_marker(ref)}
    measured = json.loads(detail.result_json)["measured"]
    assert measured["sha256"] == hashlib.sha256(payload(SIZE).encode()).hexdigest()


def test_a_forged_reference_parameter_is_refused_when_passed_to_a_step(
    estate: Estate, produced: tuple[str, ResultRef]
) -> None:
    _, ref = produced
    # The same object's place with another digest: a reference no step ever returned.
    forged = {REF_MARKER: {**ref.to_value(), "sha256": "0" * 64}}
    assert forged[REF_MARKER] != ref.to_value()
    outcome = _run_json(estate, "consume_any", f"data={json.dumps(forged)}")
    assert outcome["state"] == "FAILED", outcome
    error = outcome["error"]
    assert isinstance(error, dict)
    assert "did not record" in str(error["message"]), error


def test_a_reference_to_a_missing_step_is_refused_before_a_run_exists(
    estate: Estate, produced: tuple[str, ResultRef]
) -> None:
    run_id, _ = produced
    before = len(estate.client().list_runs(limit=100, flow_name="consume"))
    result = estate.cli("run", f"{FLOW_FILE}:consume", "-p", f"data=@result:{run_id}/nope#1")
    assert result.returncode == 1
    assert "parameter 'data'" in result.stderr and "has no step 'nope#1'" in result.stderr
    assert len(estate.client().list_runs(limit=100, flow_name="consume")) == before
