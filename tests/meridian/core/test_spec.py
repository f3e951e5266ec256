"""``meridian.core.spec.StepSpec``: its JSON form round-trips and its defaults live in one place."""

from __future__ import annotations

import dataclasses

from meridian.core.spec import OnAgentLost, StepSpec

FULL = StepSpec(
    name="extract",
    module="flows.etl",
    function="extract",
    target="cloud=aws,region in (us-east-1)",
    provider="aws-ecs",
    retries=3,
    retry_delay_s=2.5,
    retry_backoff=1.5,
    retry_jitter=0.25,
    timeout_s=30.0,
    schedule_timeout_s=90.0,
    retry_on=("builtins.ValueError", "builtins.KeyError"),
    options_json='{"cpu": 2}',
    on_agent_lost=OnAgentLost.WAIT,
    lost_after_s=45.0,
    secrets=(("API_KEY", "env:API_KEY"), ("DB_PASSWORD", "aws-sm:db")),
    isolation="process",
)


def test_json_round_trip_keeps_every_field() -> None:
    assert StepSpec.from_json(FULL.to_json()) == FULL
    plain = StepSpec("s", "m", "f")
    assert StepSpec.from_json(plain.to_json()) == plain


def test_json_form_is_plain_json_types() -> None:
    data = FULL.to_json()
    assert data["retry_on"] == ["builtins.ValueError", "builtins.KeyError"]
    assert data["secrets"] == {"API_KEY": "env:API_KEY", "DB_PASSWORD": "aws-sm:db"}
    assert data["on_agent_lost"] == "wait" and type(data["on_agent_lost"]) is str
    assert set(data) == {f.name for f in dataclasses.fields(StepSpec)}


def test_a_stored_spec_lacking_fields_takes_the_same_defaults_as_the_constructor() -> None:
    # The defaults are defined once, on the dataclass: reading {} must not invent others.
    stored = StepSpec.from_json({"name": "s", "module": "m", "function": "f"})
    assert stored == StepSpec("s", "m", "f")


def test_unknown_stored_fields_are_ignored() -> None:
    data = {**StepSpec("s", "m", "f").to_json(), "added_by_a_newer_version": 1}
    assert StepSpec.from_json(data) == StepSpec("s", "m", "f")


def test_secrets_are_kept_sorted_whatever_the_stored_order() -> None:
    stored = {"name": "s", "module": "m", "function": "f", "secrets": {"B": "env:B", "A": "env:A"}}
    spec = StepSpec.from_json(stored)
    assert spec.secrets == (("A", "env:A"), ("B", "env:B"))
    assert spec.secret_map == {"A": "env:A", "B": "env:B"}
