"""Flows whose step data is sealed end to end (key group ``eu-sites``).

The sensitive value is read by the flow body from a file outside this directory (``source``):
flow parameters and the code bundle are stored by the control plane in plaintext, so a test
that looks for the value in the control plane's database must not pass it through either.
"""

from __future__ import annotations

import time
from pathlib import Path

from meridian import StepFailed, flow, step


def _mark(work: str, name: str) -> None:
    with open(Path(work) / f"{name}.starts", "a") as f:
        f.write("x\n")


@step(target="site=eu", retries=2, retry_delay=0.1)
def enrich(account: str) -> dict:
    return {"holder": f"HOLDER-OF-{account}", "digits": sum(c.isdigit() for c in account)}


@step(target="site=eu")
def reject(account: str) -> None:
    raise ValueError(f"account {account} is blocked")


@flow(seal="eu-sites")
def sealed_payment(source: str) -> dict:
    account = Path(source).read_text().strip()
    enriched = enrich(account)
    try:
        reject(account)
    except StepFailed as exc:
        enriched["rejected"] = exc.remote_message
    return enriched


@step(target="site=eu", seal="eu-sites")
def count_digits(account: str) -> int:
    return sum(c.isdigit() for c in account)


@flow
def step_sealed_only(source: str) -> int:
    """Not sealed itself: returns only a number derived from the sealed step's result."""
    return count_digits(Path(source).read_text().strip())


@step(target="site=us", seal="eu-sites", retries=2, retry_delay=0.1)
def at_a_site_without_the_key(account: str) -> str:
    return account


@flow
def sealed_step_without_key_at_site(source: str) -> str:
    return at_a_site_without_the_key(Path(source).read_text().strip())


@step(target="site=eu", lost_after=60.0)
def first(account: str, work: str) -> str:
    _mark(work, "first")
    return f"FIRST-{account}"


@step(target="site=eu", lost_after=60.0)
def second(previous: str, work: str) -> str:
    _mark(work, "second")
    gate = Path(work) / "gate"
    deadline = time.monotonic() + 60
    while not gate.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return f"SECOND-{previous}"


@flow(seal="eu-sites")
def sealed_chain(source: str, work: str) -> str:
    return second(first(Path(source).read_text().strip(), work), work)
