"""Flow of the issue-13 acceptance test: a large result stays at its site.

``produce`` returns ``size`` bytes on the aws agent. ``same_site`` reads the reference on the
same agent (straight from its store), ``on_prem`` in another environment that the residency
rule allows (relayed through the control plane), and ``outside`` in an environment the rule
does not allow: its submission is refused before anything runs, and the flow reports why.
``kept_on_prem`` names a result store the onprem agent does not have: refused the same way.
"""

from __future__ import annotations

import hashlib

from meridian import ResultRef, flow, step

BLOCK = hashlib.sha256(b"meridian-site-results").digest() * 2048  # 64 KiB


def payload(size: int) -> bytes:
    """``size`` deterministic bytes (built fast: a 64 KiB block repeated)."""
    whole, rest = divmod(size, len(BLOCK))
    return BLOCK * whole + BLOCK[:rest]


def describe(data: bytes) -> dict[str, object]:
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


@step(target="environment=aws")
def produce(size: int) -> bytes:
    return payload(size)


@step(target="environment=aws")
def same_site(data: bytes) -> dict[str, object]:
    return describe(data)


@step(target="environment=onprem", retries=2, retry_delay=0.5)
def on_prem(data: bytes) -> dict[str, object]:
    return describe(data)


@step(target="environment=gcp-us")
def outside(data: bytes) -> dict[str, object]:
    return describe(data)


@step(target="environment=onprem", result_store="scratch")
def kept_on_prem() -> int:
    return 1


@flow
def site_results(size: int = 1024) -> dict[str, object]:
    ref = produce(size)
    assert isinstance(ref, ResultRef), f"expected a reference, got {type(ref).__name__}"
    outcome: dict[str, object] = {
        "ref_size": ref.size,
        "same_site": same_site(ref),
        "on_prem": on_prem(ref),
    }
    try:
        outside(ref)
        outcome["outside"] = "ran"
    except Exception as exc:  # the refusal, with the rule it names
        outcome["outside"] = f"{type(exc).__name__}: {exc}"
    try:
        kept_on_prem()
        outcome["no_store"] = "ran"
    except Exception as exc:  # the refusal, naming the store
        outcome["no_store"] = f"{type(exc).__name__}: {exc}"
    return outcome
