"""The web console in a real browser against a real estate: three environments, real agents.

One estate for the module (starting agents is the slow part). The control plane's certificate
is signed by its own CA, which this throwaway browser profile does not trust: the browser
context ignores certificate errors (the gRPC tests verify that certificate; here the subject
is the console).
"""

from __future__ import annotations

import os
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import ConsoleEstate
from tests.integration.harness import FLOWS
from tests.support.deadlines import DEADLINE_S
from tests.support.polling import poll_until

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "cross_cloud_etl.py"
# The README's screenshots are refreshed only on request
# (MERIDIAN_UPDATE_SCREENSHOTS=1 pytest tests/browser): a plain test run leaves the tree clean.
IMAGES = (
    REPO / "docs" / "images"
    if os.environ.get("MERIDIAN_UPDATE_SCREENSHOTS") == "1"
    else Path(tempfile.gettempdir()) / "meridian-console-screenshots"
)
LIVE_FLOWS = Path(__file__).resolve().parent / "flows.py"
SITES = (
    ("aws-demo", {"cloud": "aws", "region": "us-east-1"}),
    ("gcp-demo", {"cloud": "gcp", "region": "europe-west1"}),
    ("onprem-demo", {"site": "dc1"}),
)


@pytest.fixture(scope="module")
def estate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleEstate]:
    with ConsoleEstate(tmp_path_factory.mktemp("console")) as e:
        for environment, labels in SITES:
            e.add_agent(environment, labels)
        yield e


@pytest.fixture(scope="module")
def etl_run(estate: ConsoleEstate) -> str:
    estate.cli("run", f"{EXAMPLE}:cross_cloud_etl", check=True)
    return estate.latest_run_id("cross_cloud_etl")


def paused_run(estate: ConsoleEstate, work: Path) -> str:
    work.mkdir(parents=True, exist_ok=True)
    before = {r.flow_run_id for r in estate.client().list_runs(limit=100)}
    estate.run_background(FLOWS / "approval_flows.py", "gated_release", f"work={work}")

    def new_paused() -> str | None:
        for run in estate.client().list_runs(limit=20, flow_name="gated_release"):
            if run.flow_run_id not in before and run.state == "PAUSED":
                return run.flow_run_id
        return None

    return poll_until(new_paused, message="a gated_release run to pause for its approval")


def login(browser: Any, estate: ConsoleEstate, token: str) -> Any:
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1400, "height": 900})
    context.set_default_timeout(DEADLINE_S * 1000)
    page = context.new_page()
    page.goto(f"{estate.url}/login")
    page.fill("input[name=token]", token)
    page.click("form[action='/login'] button")
    page.wait_for_url(f"{estate.url}/runs")
    return page


def csrf_of(page: Any) -> str:
    return str(page.locator("header input[name=csrf]").get_attribute("value"))


def test_viewer_sees_the_cross_cloud_timeline_with_the_recovered_failure(
    browser: Any, estate: ConsoleEstate, etl_run: str, tmp_path: Path
) -> None:
    page = login(browser, estate, estate.new_api_token("viewer", name="auditor"))
    assert page.locator(f"a[href='/runs/{etl_run}']").count() == 1
    IMAGES.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(IMAGES / "console-runs.png"))
    page.goto(f"{estate.url}/runs/{etl_run}")
    lanes = page.locator("svg.timeline rect.bar").evaluate_all(
        "bars => bars.map(b => b.dataset.lane)"
    )
    assert {lane.split("/")[0] for lane in lanes} >= {"aws-demo", "gcp-demo", "onprem-demo"}
    recovered = page.locator("svg.timeline rect.bar.recovered")
    assert recovered.count() == 1
    assert recovered.get_attribute("data-step") == "load#1"
    assert recovered.get_attribute("data-attempt") == "1"
    assert page.locator("svg.timeline rect.first-failure").count() == 0  # the run recovered
    assert page.locator("form[action$='/cancel']").count() == 0  # a viewer gets no actions
    page.screenshot(path=str(IMAGES / "console-run.png"), full_page=True)

    # The step detail of a running step: its log lines appear while it runs (polled JSON,
    # appended as text), and stop once the run has ended.
    work = tmp_path / "chatty"
    work.mkdir()
    estate.run_background(LIVE_FLOWS, "chatty_flow", f"work={work}")
    run_id = estate.latest_run_id("chatty_flow")
    assert estate.wait_for_state(run_id, {"RUNNING"}) == "RUNNING"
    page.goto(f"{estate.url}/runs/{run_id}?step=chatty%231")
    lines = page.locator("#step-log .log-line")
    seen: int = poll_until(lines.count, message="log lines of the running step")
    poll_until(lambda: lines.count() > seen + 2, message="more lines to arrive while it runs")
    texts = lines.all_inner_texts()
    assert [t.strip() for t in texts[:3]] == ["tick 0", "tick 1", "tick 2"]
    assert page.locator("#step-log b, #step-log script").count() == 0
    (work / "stop").write_text("stop")
    assert estate.wait_for_state(run_id, {"COMPLETED"}) == "COMPLETED"
    page.context.close()


def test_operator_approves_one_paused_run_and_cancels_another(
    browser: Any, estate: ConsoleEstate, tmp_path: Path
) -> None:
    to_approve = paused_run(estate, tmp_path / "a")
    to_cancel = paused_run(estate, tmp_path / "b")
    page = login(browser, estate, estate.new_api_token("operator", name="release manager"))
    page.goto(f"{estate.url}/runs/{to_approve}")
    approve = page.locator("form[action$='/decide']").filter(
        has=page.locator("input[name=decision][value=approve]")
    )
    approve.locator("input[name=reason]").fill("change ticket 42")
    approve.locator("button").click()
    page.wait_for_url(f"{estate.url}/runs/{to_approve}")
    assert estate.wait_for_state(to_approve, {"COMPLETED"}) == "COMPLETED"
    page.goto(f"{estate.url}/runs/{to_cancel}")
    page.screenshot(path=str(IMAGES / "console-approval.png"), full_page=True)
    page.locator("form[action$='/cancel'] input[name=reason]").fill("not this week")
    page.locator("form[action$='/cancel'] button").click()
    page.wait_for_url(f"{estate.url}/runs/{to_cancel}")
    assert estate.wait_for_state(to_cancel, {"CANCELLED"}) == "CANCELLED"
    records = estate.client().list_audit_records(limit=50, newest=True)
    assert any(r.action == "run.cancelled" and r.subject == to_cancel for r in records)
    page.context.close()


def test_a_viewer_gets_403_and_a_post_without_csrf_is_refused(
    browser: Any, estate: ConsoleEstate, tmp_path: Path
) -> None:
    run_id = paused_run(estate, tmp_path)
    viewer = login(browser, estate, estate.new_api_token("viewer"))
    csrf = csrf_of(viewer)
    for path, form in (
        (f"/runs/{run_id}/cancel", {"csrf": csrf, "reason": "x"}),
        (f"/runs/{run_id}/decide", {"csrf": csrf, "key": "deploy#1", "decision": "approve"}),
        ("/fleet/drain", {"csrf": csrf, "agent": "aws-demo-agent"}),
    ):
        response = viewer.request.post(estate.url + path, form=form)
        assert response.status == 403, (path, response.text())
    viewer.context.close()

    operator = login(browser, estate, estate.new_api_token("operator"))
    no_csrf = operator.request.post(f"{estate.url}/runs/{run_id}/cancel", form={"reason": "x"})
    assert no_csrf.status == 403 and "CSRF" in no_csrf.text()
    wrong = operator.request.post(
        f"{estate.url}/runs/{run_id}/cancel", form={"csrf": "forged", "reason": "x"}
    )
    assert wrong.status == 403
    assert estate.client().get_run(run_id).state == "PAUSED"
    # The same request with the session's token goes through: the refusal was the CSRF check.
    ok = operator.request.post(
        f"{estate.url}/runs/{run_id}/cancel", form={"csrf": csrf_of(operator), "reason": "x"}
    )
    assert ok.status == 200  # followed the redirect to the run page
    assert estate.wait_for_state(run_id, {"CANCELLED"}) == "CANCELLED"
    operator.context.close()


def test_fleet_shows_a_frozen_agent_as_not_connected_within_its_lease(
    browser: Any, estate: ConsoleEstate
) -> None:
    name = estate.add_agent("edge-lab", {"site": "lab"})
    page = login(browser, estate, estate.new_api_token("admin", name="fleet admin"))
    page.goto(f"{estate.url}/fleet")
    badge = page.locator(f"[data-agent='{name}']")
    assert badge.get_attribute("data-status") == "connected"
    victim = estate.agents.pop(name)
    os.kill(victim.pid, signal.SIGSTOP)  # frozen: its stream stays open, it says nothing
    try:

        def not_connected() -> str | None:
            page.goto(f"{estate.url}/fleet")
            status = page.locator(f"[data-agent='{name}']").get_attribute("data-status")
            return status if status != "connected" else None

        # Stale after 3 missed heartbeats (1 s each), far inside the 60 s lease.
        status = poll_until(not_connected, interval=0.5, message=f"{name} to look stale")
        assert status in ("stale", "lost", "disconnected")
        page.screenshot(path=str(IMAGES / "console-fleet.png"), full_page=True)
    finally:
        victim.kill()
        victim.wait(timeout=DEADLINE_S)
    page.goto(f"{estate.url}/audit")
    assert "chain intact" in page.locator("p.chain").inner_text()
    page.screenshot(path=str(IMAGES / "console-audit.png"))
    page.context.close()
