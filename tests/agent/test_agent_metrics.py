"""The agent's own Prometheus endpoint (``--metrics-listen``): a real in-process Agent against
the fake control plane, scraped over HTTP and parsed with prometheus-client's text parser."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent import Agent, AgentConfig
from agent.metrics import parse_listen
from tests.agent.fakecp import FakeProvider
from tests.agent.test_protocol import run_async, start_cp
from tests.support.deadlines import DEADLINE_S
from tests.support.polling import apoll_until


def scrape(address: tuple[str, int]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(f"http://{address[0]}:{address[1]}/metrics", timeout=DEADLINE_S)
    assert response.status_code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def test_agent_metrics_endpoint_serves_its_own_state(tmp_path: Path) -> None:
    address: tuple[str, int] = ("", 0)

    async def scenario() -> None:
        nonlocal address
        cp = await start_cp(tmp_path)
        config = AgentConfig(
            control_plane=cp.address,
            data_dir=tmp_path / "agent",
            labels={"cloud": "test"},
            providers=("fake",),
            capacity=3,
            drain_grace_s=0.5,
            reconnect_max_backoff_s=0.3,
            metrics_listen="127.0.0.1:0",
        )
        provider = FakeProvider()
        agent = Agent(config, provider_loader=lambda _type, _cfg: provider)
        run_task = asyncio.ensure_future(agent.run())
        try:
            session = await cp.next_session()
            session.welcome()
            found = await apoll_until(
                lambda: agent.metrics_address, message="the metrics endpoint to listen"
            )
            assert found is not None
            address = found
            assert address[0] == "127.0.0.1"  # bound only where told
            first = await asyncio.to_thread(scrape, address)
            assert first[("meridian_agent_slots_capacity", ())] == 3
            assert first[("meridian_agent_slots_in_use", ())] == 0
            assert first[("meridian_agent_journal_pending_reports", ())] == 0
            assert first[("meridian_agent_journal_quarantined_reports", ())] == 0
            assert first[("meridian_agent_degraded", (("reason", "none"),))] == 0
            assert first[("meridian_agent_loop_stalls_total", ())] == 0

            session.assign("a1", 1, run_for=60)
            await session.next_report()  # RUNNING, journaled until acked
            session.decide("a1", 1)

            async def busy() -> bool:
                now = await asyncio.to_thread(scrape, address)
                return now[("meridian_agent_slots_in_use", ())] == 1

            in_use: bool = await apoll_until(busy, message="slots_in_use to count the attempt")
            assert in_use
        finally:
            if cp.latest is not None:
                cp.latest.ack_everything()
            await agent.shutdown(grace=0.2)
            await run_task
            await cp.stop()
        with pytest.raises(httpx.TransportError):  # closed with the agent
            httpx.get(f"http://{address[0]}:{address[1]}/metrics", timeout=2)

    run_async(scenario)


def test_metrics_listen_wants_host_and_port() -> None:
    assert parse_listen("127.0.0.1:9400") == ("127.0.0.1", 9400)
    assert parse_listen("[::1]:9400") == ("::1", 9400)
    for bad in ("9400", ":9400", "host:", "host:x", "host:70000"):
        with pytest.raises(ValueError):
            parse_listen(bad)


def test_provider_errors_are_counted_per_provider() -> None:
    from prometheus_client.exposition import generate_latest
    from prometheus_client.registry import CollectorRegistry

    from agent.metrics import AgentGauges, AgentMetrics, ProviderErrors

    errors = ProviderErrors()
    errors.count("aws-ecs")
    errors.count("aws-ecs")
    errors.count("process")
    metrics = AgentMetrics()
    metrics.gauges = AgentGauges(lambda: 1, 4, lambda: 0, lambda: 0, lambda: "", errors.snapshot)
    registry = CollectorRegistry()
    registry.register(metrics)  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    samples = {
        s.labels["provider"]: s.value
        for family in text_string_to_metric_families(text)
        if family.name == "meridian_agent_provider_errors"
        for s in family.samples
        if s.name.endswith("_total")
    }
    assert samples == {"aws-ecs": 2.0, "process": 1.0}
