"""Automated triggers with real processes: a schedule whose slots fire exactly once across a
SIGKILL and restart of the control plane (decision 0019) and catch up per policy; a run
triggered by another's failure, receiving the upstream run id; the webhook endpoint refusing a
bad token, a replayed idempotency key and an oversize body, and accepting a good call."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import sqlite3
import ssl
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.harness import FLOWS, Estate, free_port
from tests.support.deadlines import DEADLINE_S

FLOW_FILE = FLOWS / "trigger_flows.py"
SLOT_S = 2


class WebEstate(Estate):
    """An estate whose control plane also serves the web listener (webhooks)."""

    def __init__(self, root: Path, **kw: Any) -> None:
        super().__init__(root, **kw)
        self.http_address = f"127.0.0.1:{free_port()}"

    def _server_args(self) -> list[str]:
        return [*super()._server_args(), "--http-listen", self.http_address]


@pytest.fixture
def estate(tmp_path: Path) -> Iterator[WebEstate]:
    e = WebEstate(tmp_path / "estate", heartbeat_s=0.5, runner_grace_s=1.0)
    with e:
        e.add_agent("hosted", {"pool": "hosted"}, name="host-a", runner_slots=2)
        yield e


def deploy(estate: Estate, flow: str, name: str, *extra: str) -> None:
    estate.cli(
        "deploy", f"{FLOW_FILE}:{flow}", "--name", name, "--runner-target", "pool=hosted",
        *extra, check=True,
    )  # fmt: skip


def query(estate: Estate, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Read the control plane's SQLite database (it may be down: what was committed)."""
    with sqlite3.connect(estate.server_dir / "meridian.db", timeout=30) as db:
        return db.execute(sql, args).fetchall()


def fires(estate: Estate, schedule_id: str) -> list[tuple[str, str, str | None]]:
    """(nominal time, slot key, run id) of every fired slot of the schedule, oldest first."""
    rows = query(
        estate,
        "SELECT nominal_at, slot_key, flow_run_id FROM schedule_fires WHERE schedule_id = ? "
        "ORDER BY nominal_at",
        schedule_id,
    )
    return [(str(n), str(k), r) for n, k, r in rows]


def schedule_ids(estate: Estate, deployment: str) -> dict[str, str]:
    """Schedule id by its catch-up mode."""
    rows = query(
        estate,
        "SELECT s.id, s.catch_up FROM schedules s JOIN deployments d ON d.id = s.deployment_id "
        "WHERE d.name = ?",
        deployment,
    )
    return {json.loads(catch_up)["mode"]: sid for sid, catch_up in rows}


def fired_slots_and_runs(estate: Estate, deployment: str) -> tuple[Counter[str], set[str]]:
    """The deployment's runs counted by the slot that created them, and the slot keys of its
    fired slots, read in one snapshot of the database (one read transaction)."""
    with sqlite3.connect(estate.server_dir / "meridian.db", timeout=30) as db:
        db.execute("BEGIN")
        details = db.execute(
            "SELECT r.trigger_detail FROM flow_runs r JOIN deployments d "
            "ON d.id = r.deployment_id WHERE d.name = ?",
            (deployment,),
        ).fetchall()
        keys = db.execute(
            "SELECT f.slot_key FROM schedule_fires f JOIN deployments d "
            "ON d.id = f.deployment_id WHERE d.name = ?",
            (deployment,),
        ).fetchall()
        db.execute("COMMIT")
    runs = Counter(json.loads(detail)["detail"]["slot"] for (detail,) in details)
    return runs, {str(k) for (k,) in keys}


def nominal(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


def test_a_schedule_fires_each_slot_once_across_a_sigkill_and_catches_up(
    estate: WebEstate,
) -> None:
    deploy(
        estate, "tick", "ticker",
        "--schedule", f"every={SLOT_S}s;catch-up=all;window=1m;max-runs=100",
        "--schedule", f"every={SLOT_S}s;catch-up=skip;param.n=1",
    )  # fmt: skip
    ids = schedule_ids(estate, "ticker")
    estate.wait_until(lambda: len(fires(estate, ids["all"])) >= 2, "two slots to fire")

    for _ in range(2):
        estate.kill_server()
        killed_at = dt.datetime.now(dt.UTC)
        time.sleep(2.5 * SLOT_S)  # down across at least two slots (the scenario, not a wait)
        estate.restart_server()

        def caught_up(killed: dt.datetime = killed_at) -> bool:
            return sum(nominal(n) > killed for n, _, _ in fires(estate, ids["all"])) >= 4

        estate.wait_until(caught_up, "the missed slots and two more to fire")

    every = [nominal(n) for n, _, _ in fires(estate, ids["all"])]
    # catch-up=all: every slot from the first to the last fired, none twice, none missing.
    assert every == [every[0] + dt.timedelta(seconds=SLOT_S * i) for i in range(len(every))]
    skipped = [nominal(n) for n, _, _ in fires(estate, ids["skip"])]
    gaps = [b - a for a, b in itertools.pairwise(skipped)]
    # catch-up=skip: each outage left a gap of missed slots behind it.
    assert sum(gap > dt.timedelta(seconds=SLOT_S) for gap in gaps) >= 2
    # Read in one snapshot: the control plane goes on firing slots meanwhile.
    runs_per_slot, fired = fired_slots_and_runs(estate, "ticker")
    assert max(runs_per_slot.values()) == 1
    assert set(runs_per_slot) == fired
    actions = [r.action for r in estate.client().iter_audit_records()]
    assert "schedule.slots_skipped" in actions

    # With a hosted runner in place, the scheduled runs complete.
    first_run = fires(estate, ids["all"])[0][2]
    assert first_run is not None
    assert estate.wait_for_state(first_run, {"COMPLETED", "FAILED"}) == "COMPLETED"


def test_a_run_triggered_by_a_failure_receives_the_upstream_run_id(estate: WebEstate) -> None:
    deploy(estate, "flaky", "flaky")
    deploy(
        estate, "alert", "alert", "--on-completion-of", "flaky", "--on-state", "FAILED",
        "--upstream-run-param", "upstream_run",
    )  # fmt: skip
    started = estate.cli("deployments", "run", "flaky", "-p", "day=2026-01-01", check=True)
    upstream = started.stdout.split()[1]
    assert estate.wait_for_state(upstream, {"COMPLETED", "FAILED"}) == "FAILED"
    client = estate.client()

    def alert_run() -> str | None:
        found = [r for r in client.list_runs() if r.flow_name == "alert"]
        return found[0].flow_run_id if found else None

    estate.wait_until(alert_run, "the alert deployment to be triggered")
    downstream = alert_run()
    assert downstream is not None
    assert estate.wait_for_state(downstream, {"COMPLETED", "FAILED"}) == "COMPLETED"
    assert json.loads(client.get_run(downstream).result_json) == upstream
    triggered = [
        r for r in client.iter_audit_records()
        if r.action == "deployment.triggered" and r.subject == downstream
    ]  # fmt: skip
    assert [r.actor for r in triggered] == [f"run:{upstream}"]


def test_the_webhook_refuses_bad_calls_and_accepts_a_good_one(estate: WebEstate) -> None:
    deploy(estate, "ingest", "ingest")
    created = estate.cli("deployments", "webhook", "create", "ingest", "--json", check=True)
    hook = json.loads(created.stdout)
    url = f"https://{estate.http_address}{hook['url_path']}"

    def post(token: str, key: str | None, body: bytes) -> httpx.Response:
        headers = {"authorization": f"Bearer {token}"}
        if key is not None:
            headers["idempotency-key"] = key
        trust = ssl.create_default_context(cafile=str(estate.ca_file))
        with httpx.Client(verify=trust, timeout=DEADLINE_S) as http:
            return http.post(url, headers=headers, content=body)

    good = json.dumps({"source": "github", "n": 3}).encode()
    assert post(hook["token"] + "x", "d-1", good).status_code == 401
    assert post(hook["token"], "d-1", b" " * (64 * 1024 + 1)).status_code == 413
    accepted = post(hook["token"], "d-1", good)
    assert accepted.status_code == 202, accepted.text
    run_id = accepted.json()["flow_run_id"]
    replayed = post(hook["token"], "d-1", good)
    assert replayed.status_code == 409 and replayed.json()["flow_run_id"] == run_id
    assert estate.wait_for_state(run_id, {"COMPLETED", "FAILED"}) == "COMPLETED"
    client = estate.client()
    assert json.loads(client.get_run(run_id).result_json) == {"source": "github", "n": 3}
    assert [r.flow_run_id for r in client.list_runs() if r.flow_name == "ingest"] == [run_id]
    records = list(client.iter_audit_records())
    refused = [r for r in records if r.action == "webhook.refused"]
    assert len(refused) == 1 and hook["token"] not in refused[0].details_json
    triggered = [r for r in records if r.action == "deployment.triggered"]
    assert [r.actor for r in triggered] == [f"webhook:{hook['webhook_id']}"]

    # Revoked (audited), its token is refused; the list shows it revoked, never a token.
    listed = estate.cli("deployments", "webhook", "list", "ingest", check=True).stdout
    assert hook["webhook_id"] in listed and "live" in listed and hook["token"] not in listed
    estate.cli("deployments", "webhook", "revoke", "ingest", hook["webhook_id"], check=True)
    assert post(hook["token"], "d-2", good).status_code == 401
    (revoked,) = client.list_webhooks("ingest")
    assert revoked.webhook_id == hook["webhook_id"] and revoked.revoked_at is not None
    audited = [r for r in client.iter_audit_records() if r.action == "webhook.revoked"]
    assert len(audited) == 1 and hook["webhook_id"] in audited[0].details_json
