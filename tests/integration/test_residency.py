"""Data residency end to end, on a real estate (control plane and two agents as processes over
loopback TLS, the process provider): the aws agent keeps large results in its filesystem store.

An admin sets aws-demo's residency rule with ``meridian environments residency``; a flow that
passes an aws-demo result to a step on gcp-demo is then refused at submission, with an error
naming the rule, the environment and the step, and the refusal is in the audit log. A step on
an allowed agent reads the same kind of result; once the rule is cleared the flow completes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.integration.harness import FLOWS, Estate

FLOW_FILE = FLOWS / "transfer_flows.py"
SIZE = 512 * 1024  # above the 256 KiB inline threshold: the result stays at its site
RULE = "cloud=aws"


@pytest.fixture(scope="module")
def estate(tmp_path_factory: pytest.TempPathFactory, estate_db: str | None) -> Iterator[Estate]:
    root = tmp_path_factory.mktemp("residency")
    config = root / "agent-aws.toml"
    config.write_text(f'[result_stores.scratch]\ntype = "filesystem"\nroot = "{root / "aws"}"\n')
    with Estate(root, db_url=estate_db, heartbeat_s=0.5) as e:
        e.add_agent("aws-demo", {"cloud": "aws"}, config=config)
        e.add_agent("gcp-demo", {"cloud": "gcp"})
        yield e


def run_cross(estate: Estate, seed: str) -> tuple[int, str, str]:
    """Run ``cross`` (produce on aws, measure on gcp): (exit code, output, run id)."""
    result = estate.cli("run", f"{FLOW_FILE}:cross", "-p", f"seed={seed}", "-p", f"size={SIZE}")
    return result.returncode, result.stdout + result.stderr, estate.latest_run_id("cross")


def test_a_rule_refuses_the_cross_environment_read_and_clearing_it_lets_it_run(
    estate: Estate,
) -> None:
    set_rule = estate.cli("environments", "residency", "aws-demo", RULE, "--reason", "test")
    assert set_rule.returncode == 0, set_rule.stderr
    listed = json.loads(estate.cli("environments", "list", "--json", check=True).stdout)
    aws = next(e for e in listed if e["name"] == "aws-demo")
    assert (aws["residency"], aws["connected"], aws["result_stores"]) == (RULE, 1, ["scratch"])
    assert aws["default_result_store"] == "scratch"

    code, output, run_id = run_cross(estate, "refused")
    assert code != 0, output
    detail = estate.client().get_run(run_id)
    assert detail.state == "FAILED"
    # The flow body saw the same class as a refused download (not a ConflictError).
    assert detail.error is not None, detail
    assert detail.error.type == "meridian.core.residency.ResidencyRefused", detail.error
    produced = next(s for s in detail.steps if s.key == "produce#1")
    assert produced.state == "COMPLETED" and produced.result_ref_json  # kept at its site
    assert not any(s.key == "measure#1" for s in detail.steps)  # never submitted
    said = output + (detail.error.message if detail.error else "")
    for needle in ("'aws-demo'", RULE, "'measure#1'", "'gcp-demo'"):
        assert needle in said, said
    audit = json.loads(estate.cli("audit", "list", "--json", "--limit", "200", check=True).stdout)
    refusals = [r for r in audit if r["action"] == "residency.refused"]
    assert [r["subject"] for r in refusals] == [run_id]
    assert refusals[0]["details"]["rules"] == {"aws-demo": RULE}

    cleared = estate.cli("environments", "residency", "aws-demo", "--clear", "--reason", "done")
    assert cleared.returncode == 0, cleared.stderr
    code, output, run_id = run_cross(estate, "allowed")
    assert code == 0, output
    assert estate.client().get_run(run_id).state == "COMPLETED"


def test_a_pinned_labels_only_rule_ignores_the_labels_an_agent_claims(estate: Estate) -> None:
    # gcp-demo claims cloud=gcp in its configuration; its join token pinned nothing.
    strict = estate.cli(
        "environments", "residency", "aws-demo", "cloud=gcp", "--pinned-labels-only",
        "--reason", "hold against a compromised site",
    )  # fmt: skip
    assert strict.returncode == 0, strict.stderr
    assert "by the labels agents' join tokens pinned" in strict.stdout
    listed = json.loads(estate.cli("environments", "list", "--json", check=True).stdout)
    aws = next(e for e in listed if e["name"] == "aws-demo")
    assert (aws["residency"], aws["residency_pinned_labels_only"]) == ("cloud=gcp", True)
    shown = estate.cli("environments", "list", check=True).stdout
    assert "cloud=gcp (pinned labels only)" in shown

    code, output, run_id = run_cross(estate, "claimed")
    assert code != 0, output
    detail = estate.client().get_run(run_id)
    said = output + (detail.error.message if detail.error else "")
    assert "pinned labels only" in said and "'gcp-demo'" in said, said

    # The same selector judged by every label lets the claimed label count again.
    loose = estate.cli("environments", "residency", "aws-demo", "cloud=gcp", "--reason", "ok")
    assert loose.returncode == 0, loose.stderr
    code, output, run_id = run_cross(estate, "judged-by-claims")
    assert code == 0, output
    bad = estate.cli("environments", "residency", "aws-demo", "--clear", "--pinned-labels-only")
    assert bad.returncode != 0 and "--pinned-labels-only goes with a RULE" in bad.stderr
    estate.cli("environments", "residency", "aws-demo", "--clear", check=True)
