"""The pure hash-chain functions: canonical encodings and what a record hash covers."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

import control_plane.audit as audit
from control_plane.audit._chain import details_text, digest_text, parse_at

AT = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
BASE: dict[str, Any] = {
    "record_id": 7,
    "at": AT,
    "actor": "cli",
    "action": "run.triggered",
    "subject": "run-1",
    "details": '{"flow":"etl"}',
    "prev_hash": "a" * 64,
}


def test_public_names_are_pinned() -> None:
    assert sorted(audit.__all__) == [
        "CLI",
        "GENESIS_HASH",
        "SYSTEM",
        "VerifyReport",
        "acting_as",
        "agent_actor",
        "append",
        "canonical_json",
        "current_actor",
        "format_at",
        "list_records",
        "record_hash",
        "records",
        "token_actor",
        "verify_chain",
    ]


def test_canonical_json_is_independent_of_key_order_and_spacing() -> None:
    assert audit.canonical_json({"b": 1, "a": [1, "é"]}) == '{"a":[1,"é"],"b":1}'
    assert details_text({"b": 1, "a": 2}) == details_text({"a": 2, "b": 1})
    with pytest.raises(ValueError):
        audit.canonical_json({"x": float("nan")})


def test_timestamps_keep_microseconds_and_normalise_to_utc() -> None:
    assert audit.format_at(AT) == "2026-01-02T03:04:05.678901Z"
    other_zone = AT.astimezone(dt.timezone(dt.timedelta(hours=5)))
    assert audit.format_at(other_zone) == audit.format_at(AT)
    assert parse_at(audit.format_at(AT)) == AT
    with pytest.raises(ValueError):
        audit.format_at(AT.replace(tzinfo=None))


def test_record_hash_is_deterministic_hex_sha256() -> None:
    first = audit.record_hash(**BASE)
    assert first == audit.record_hash(**BASE)
    assert len(first) == 64 and int(first, 16) >= 0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("record_id", 8),
        ("at", AT + dt.timedelta(microseconds=1)),
        ("actor", "agent:a1"),
        ("action", "run.cancelled"),
        ("subject", "run-2"),
        ("details", '{"flow":"etl2"}'),
        ("prev_hash", "b" * 64),
    ],
)
def test_every_field_is_covered_by_the_hash(field: str, value: object) -> None:
    assert audit.record_hash(**{**BASE, field: value}) != audit.record_hash(**BASE)


def test_fields_cannot_be_shifted_into_each_other() -> None:
    # A naive concatenation would hash ("ab", "c") and ("a", "bc") alike.
    one = audit.record_hash(**{**BASE, "actor": "cliX", "action": "run"})
    two = audit.record_hash(**{**BASE, "actor": "cli", "action": "Xrun"})
    assert one != two


def test_digest_of_nothing_is_empty() -> None:
    assert digest_text("") == "" and digest_text(None) == ""
    assert digest_text("{}") == "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
