"""A cross-cloud ETL: extract orders in AWS, transform them in GCP, load them on-prem.

Run it with everything on this machine (a control plane and three agents pretending to be
an AWS account, a GCP project and a data centre):

    meridian dev

or against your own control plane and agents:

    meridian run examples/cross_cloud_etl.py:cross_cloud_etl -p day=2024-06-01

What it shows:

* targets  - each step says where it must run with a label selector (``cloud=aws``, ...);
* fan-out  - ``transform.map(...)`` runs one step per partition, in parallel;
* retries  - ``load`` fails once with a transient error and its retry succeeds; the audit view
             (``meridian runs show RUN``) lists that failure under "Recovered failures";
* plain Python in the flow body - an ``if``/``else`` on step results decides what to load.

The data is generated, so the example needs no cloud account. Every step returns small JSON.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

from meridian import flow, step, wait

# Each regional shop reports in its own currency; the warehouse stores EUR.
REGIONS = {"us-east": "USD", "eu-west": "EUR", "ap-northeast": "JPY"}
EUR_RATE = {"USD": 0.92, "EUR": 1.0, "JPY": 0.0059}
TYPICAL_PRICE = {"USD": 60.0, "EUR": 55.0, "JPY": 9000.0}


@step(target="cloud=aws")
def extract(day: str) -> list[dict[str, Any]]:
    """Read the day's orders from the (simulated) S3 landing bucket: one batch per region."""
    rng = random.Random(day)  # same day, same data: reruns are comparable
    batches = []
    for region, currency in REGIONS.items():
        price = TYPICAL_PRICE[currency]
        # A few refunds (negative amounts) sneak in; transform drops them.
        amounts = [round(rng.uniform(-0.1, 1.0) * price, 2) for _ in range(rng.randint(5, 12))]
        batches.append({"region": region, "currency": currency, "amounts": amounts})
    return batches


@step(target="cloud=gcp")
def transform(batch: dict[str, Any]) -> dict[str, Any]:
    """Clean one region's batch and convert it to EUR (one step run per region, in parallel)."""
    currency = batch["currency"]
    amounts = batch["amounts"]
    sales = [a for a in amounts if a > 0]
    return {
        "region": batch["region"],
        "orders": len(sales),
        "refunds_dropped": len(amounts) - len(sales),
        "revenue_eur": round(sum(sales) * EUR_RATE[currency], 2),
    }


def _first_attempt_marker() -> Path | None:
    """A file that exists once ``load`` has failed for this run, shared by all its attempts.

    Retries may run in a new process (or on another agent of the site), so the marker lives
    on disk and is named after the flow run the process provider tells us about.
    """
    run_id = os.environ.get("MERIDIAN_FLOW_RUN_ID")
    if not run_id:
        return None  # called outside Meridian (e.g. a unit test): no simulated failure
    return Path(tempfile.gettempdir()) / f"meridian-demo-load-{run_id}.failed-once"


@step(target="site=dc1", retries=2, retry_delay=0.2)
def load(table: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Write the regional totals into the on-prem warehouse.

    The first attempt of every run hits a (simulated) dropped connection, the kind of
    transient error retries exist for.
    """
    marker = _first_attempt_marker()
    if marker is not None and not marker.exists():
        marker.write_text("the first attempt failed on purpose\n", encoding="utf-8")
        raise ConnectionResetError("warehouse connection reset by peer (simulated)")
    if marker is not None:
        marker.unlink(missing_ok=True)
    print(f"wrote {len(rows)} rows into {table}")
    return {"table": table, "rows_written": len(rows)}


@step  # no target: any connected agent may run it
def report(day: str, totals: list[dict[str, Any]], loaded: dict[str, Any]) -> dict[str, Any]:
    """Summarise the day for the people who asked for it."""
    revenue = round(sum(t["revenue_eur"] for t in totals), 2)
    best = max(totals, key=lambda t: t["revenue_eur"])
    print(f"{day}: {revenue} EUR, best region {best['region']}")
    return {
        "day": day,
        "revenue_eur": revenue,
        "best_region": best["region"],
        "table": loaded["table"],
        "rows_written": loaded["rows_written"],
    }


@flow
def cross_cloud_etl(day: str = "2024-06-01") -> dict[str, Any]:
    """Extract in AWS, transform per region in GCP, load on-prem, then report."""
    batches = extract(day)
    totals = wait(transform.map(batches))  # one transform per region, run in parallel

    # Ordinary Python decides what happens next: regions without sales are not loaded.
    with_sales = [t for t in totals if t["orders"]]
    if with_sales:
        loaded = load("sales_daily", with_sales)
    else:
        loaded = {"table": "sales_daily", "rows_written": 0}
    return report(day, totals, loaded)
